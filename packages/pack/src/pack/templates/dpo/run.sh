#!/usr/bin/env bash
# Preference tuning (DPO with LoRA) on data/pairs.jsonl: base model -> dpo.yaml -> the held-out rewards -> a sample.
#
#   ./run.sh                               a stand-in base (base.yaml, trained here in seconds), then DPO
#   BASE=path/to/model ./run.sh            an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory
#   BASE=registry:NAME@production ./run.sh a registry version (lmstack-registry)
#
# Environment: PYTHON (default python), BASE, STEPS (the stand-in base's steps, default base.yaml's), DPO_STEPS
# (default dpo.yaml's train.steps), OUT (default runs/dpo). Extra arguments go to the DPO run: ./run.sh --train.lr 5e-3
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=${OUT:-runs/dpo}
# shellcheck source=base.sh
source base.sh

echo "==> 2. DPO: python -m train.run --config dpo.yaml"
"$PY" -m train.run --config dpo.yaml --train.out_dir "$OUT" ${DPO_STEPS:+--train.steps "$DPO_STEPS"} "$@"
TUNED=$(ls -d "$OUT"/checkpoints/step_* | tail -n 1)
echo "    checkpoint: $TUNED (adapters merged; the PEFT adapter alone in $TUNED/adapter)"

echo "==> 3. held-out preference metrics the run logged"
"$PY" - "$OUT/logs/scalars.csv" <<'PYEOF'
import csv, sys
with open(sys.argv[1], newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["tag"] in ("eval/rewards/accuracies", "eval/rewards/margins")]
for r in rows:
    print(f"    step {r['step']:>4} {r['tag']:<24} {float(r['value']):.4f}")
if not rows:
    print("    (no eval yet: train.eval_every is past the last step)")
PYEOF

echo "==> 4. a sample from the tuned model"
"$PY" generate.py "$TUNED" --prompt "$(printf 'Q: How do I keep gulls off the beds?\nA: ')" --max-new-tokens 48
