#!/usr/bin/env bash
# Align a model with preference pairs (DPO), the step after supervised fine-tuning, on a CPU in seconds.
#
#   examples/align_dpo.sh [OUT]          (default OUT=runs/examples/dpo; run from the repo root)
#
# 1. A base model: cfgs/debug.yaml pre-trained for $STEPS steps on the embedded corpus. Any saved model works in
#    its place: an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory.
# 2. Preference pairs in TRL's JSONL format ({"prompt", "chosen", "rejected"}) from this repository's package
#    READMEs: the prompt is a sentence's first four words, the chosen completion its next six words in capitals,
#    the rejected one the same words as written: a house style the base model does not have (it finds lower case
#    likelier), as real preference data mostly teaches style. A fifth of the pairs are held out.
# 3. `python -m train.run` with no model section: `train.init_from` names the base, `train.lora` trains rank-8
#    adapters, and `train.preference` asks for DPO (sigmoid loss, beta 0.1) with the base model itself, adapters
#    off, as the reference (no copy of the weights). Rewards, margins and accuracy on the held-out pairs are logged.
# 4. The result: held-out reward accuracy and margin as the run logged them, then checked by hand from the
#    checkpoint (adapters merged) against the base: how often each finds the chosen completion likelier.
# Environment: PYTHON (default python), STEPS (default 30), DPO_STEPS (default 30).
set -euo pipefail
OUT=${1:-runs/examples/dpo}
PY=${PYTHON:-python}
STEPS=${STEPS:-30}
DPO_STEPS=${DPO_STEPS:-30}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "==> 1. base model: cfgs/debug.yaml, $STEPS steps on the embedded corpus"
"$PY" -m train.run --config cfgs/debug.yaml --train.steps "$STEPS" --train.eval_every 0 --train.callbacks '' \
  --train.out_dir "$OUT/base" 2>"$OUT/base.log" || { cat "$OUT/base.log"; exit 1; }
BASE=$(ls -d "$OUT"/base/checkpoints/step_* | tail -n 1)
echo "    $BASE"

echo "==> 2. preference pairs: README sentences continued in capitals (chosen) or as written (rejected)"
"$PY" - "$OUT/pairs.jsonl" <<'PY'
import json, re, sys
from pathlib import Path

pairs = []
for readme in sorted(Path("packages").glob("*/README.md")):
    for line in readme.read_text().splitlines():
        words = re.sub(r"[`*_\[\]()]", "", line).split()
        if len(words) < 10 or line.startswith(("    ", "|", "#", ">")):
            continue
        prompt, rest = " ".join(words[:4]) + " ", words[4:10]
        pairs.append({"prompt": prompt, "chosen": " ".join(rest).upper(), "rejected": " ".join(rest)})
pairs = pairs[:320]
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(p) + "\n" for p in pairs)
print(f"    {len(pairs)} pairs -> {sys.argv[1]}")
PY

echo "==> 3. DPO with LoRA: no model section, train.init_from + train.lora + train.preference"
cat > "$OUT/dpo.yaml" <<EOF
name: dpo-readmes
data: {dataset: preference, path: $OUT/pairs.jsonl, seq_len: 96, batch_size: 16, val_fraction: 0.2, pack: false}
train:
  init_from: $BASE
  lora: {r: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
  preference: {method: dpo, beta: 0.1, loss_type: sigmoid}
  steps: $DPO_STEPS
  lr: 1.0e-2
  warmup_steps: 2
  weight_decay: 0.0
  eval_every: 5
  eval_steps: 4
  log_every: 5
  callbacks: []
  out_dir: $OUT/dpo
viz: {backend: [csv], log_every: 1}
EOF
"$PY" -m train.run --config "$OUT/dpo.yaml" 2>"$OUT/dpo.log" || { cat "$OUT/dpo.log"; exit 1; }
TUNED=$(ls -d "$OUT"/dpo/checkpoints/step_* | tail -n 1)
echo "    $TUNED"

echo "==> 4. the result"
"$PY" - "$OUT" "$BASE" "$TUNED" <<'PY'
import csv, sys
from pathlib import Path

import torch

from model.lm import TransformerLM
from rl import build_preference_dataloader, sequence_logps

out, base, tuned = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
with open(out / "dpo" / "logs" / "scalars.csv", newline="") as f:
    rows = list(csv.DictReader(f))
def series(tag):
    return {int(r["step"]): float(r["value"]) for r in rows if r["tag"] == tag}
acc, margin = series("eval/rewards/accuracies"), series("eval/rewards/margins")
first, last = min(acc), max(acc)
print(f"    held-out pairs, eval/rewards/accuracies: step {first} {acc[first]:.3f} -> step {last} {acc[last]:.3f}")
print(f"    held-out pairs, eval/rewards/margins: step {first} {margin[first]:.4f} -> step {last} {margin[last]:.4f}")
# By hand: the held-out pairs under the tuned checkpoint (adapters merged) and the base
val = build_preference_dataloader(out / "pairs.jsonl", batch_size=4, seq_len=96, tokenizer=str(base),
                                  val_fraction=0.2, split="val", shuffle=False)
models = {k: TransformerLM.from_pretrained(d).eval() for k, d in (("tuned", tuned), ("base", base))}
wins = total = 0
prefer = {"base": 0, "tuned": 0}
with torch.no_grad():
    for b in val:
        lp = {k: sequence_logps(m(b.input_ids, attn_mask=b.attention_mask), b.labels)[0] for k, m in models.items()}
        for k in prefer:
            prefer[k] += int((lp[k][0::2] > lp[k][1::2]).sum())
        ratio = lp["tuned"] - lp["base"]
        wins += int((ratio[0::2] > ratio[1::2]).sum())
        total += ratio.shape[0] // 2
print(f"    by hand, held-out pairs where the model finds the chosen completion likelier than the rejected: base "
      f"{prefer['base']} of {total}, {tuned.name} {prefer['tuned']} of {total}")
print(f"    ... and where the chosen one gained more log-likelihood over the base than the rejected: {wins} of {total}")
sys.exit(0 if margin[last] > margin[first] and wins > total / 2 and prefer["tuned"] > total / 2 > prefer["base"]
         else 1)
PY
