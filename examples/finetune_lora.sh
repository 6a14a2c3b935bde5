#!/usr/bin/env bash
# Fine-tune a saved model with LoRA on your own text, then use the result everywhere a checkpoint goes.
#
#   examples/finetune_lora.sh [OUT]          (default OUT=runs/examples/finetune; run from the repo root)
#
# 1. A base model: cfgs/debug.yaml pre-trained for $STEPS steps on the embedded corpus (Python's own source).
#    Any saved model works in its place: an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory.
# 2. New-domain text: this repository's Markdown docs, curated and tokenized by `python -m corpus.cli build` with the
#    base checkpoint's own tokenizer (the checkpoint directory is a tokenizer spec).
# 3. `python -m train.run` with a config that has no model section: `train.init_from` names the base checkpoint
#    (its architecture and tokenizer come from there) and `train.lora` trains rank-8 adapters on q/k/v/o and the MLP
#    with every other weight frozen. eval/loss on held-out docs is logged at every step.
# 4. The result: the checkpoint loads merged through TransformerLM.from_pretrained (serve, eval, export take it as
#    is), its adapter/ directory is a PEFT adapter (peft.PeftModel.from_pretrained on the transformers model), and
#    every frozen weight is bit-identical to the base.
# Environment: PYTHON (default python), STEPS (default 30), FT_STEPS (default 30).
set -euo pipefail
OUT=${1:-runs/examples/finetune}
PY=${PYTHON:-python}
STEPS=${STEPS:-30}
FT_STEPS=${FT_STEPS:-30}
rm -rf "$OUT"
mkdir -p "$OUT/docs"

echo "==> 1. base model: cfgs/debug.yaml, $STEPS steps on the embedded corpus"
"$PY" -m train.run --config cfgs/debug.yaml --train.steps "$STEPS" --train.eval_every 0 --train.callbacks '' \
  --train.out_dir "$OUT/base" 2>"$OUT/base.log" || { cat "$OUT/base.log"; exit 1; }
BASE=$(ls -d "$OUT"/base/checkpoints/step_* | tail -n 1)
echo "    $BASE"

echo "==> 2. new-domain text: the repository's Markdown, tokenized with the base model's tokenizer"
for f in README.md docs/*.md packages/*/README.md examples/README.md; do cp "$f" "$OUT/docs/$(echo "$f" | tr / _)"; done
"$PY" -m corpus.cli build --input "$OUT/docs" --outdir "$OUT/shards" --tokenizer "$BASE" --progress off \
  >"$OUT/corpus.log" 2>&1 || { cat "$OUT/corpus.log"; exit 1; }
tail -n 1 "$OUT/corpus.log" | sed 's/^/    /'

echo "==> 3. LoRA fine-tuning: no model section, train.init_from + train.lora"
cat > "$OUT/finetune.yaml" <<EOF
name: finetune-docs
data: {path: $OUT/shards, seq_len: 64, batch_size: 8, val_fraction: 0.1}
train:
  init_from: $BASE
  lora: {r: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
  steps: $FT_STEPS
  lr: 3.0e-3
  warmup_steps: 2
  weight_decay: 0.0
  eval_every: 1
  eval_steps: 2
  log_every: 5
  callbacks: []
  out_dir: $OUT/finetune
viz: {backend: [csv], log_every: 1}
EOF
"$PY" -m train.run --config "$OUT/finetune.yaml" 2>"$OUT/finetune.log" || { cat "$OUT/finetune.log"; exit 1; }
TUNED=$(ls -d "$OUT"/finetune/checkpoints/step_* | tail -n 1)
echo "    $TUNED"

echo "==> 4. the result"
"$PY" - "$OUT" "$BASE" "$TUNED" <<'PY'
import csv, json, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.lm import TransformerLM

out, base, tuned = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
with open(out / "finetune" / "logs" / "scalars.csv", newline="") as f:
    ev = {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["tag"] == "eval/loss"}
first, last = min(ev), max(ev)
print(f"    held-out docs eval/loss: step {first} {ev[first]:.4f} -> step {last} {ev[last]:.4f}")
resolved = (out / "finetune" / "config.yaml").read_text()
print(f"    the model section came from the base checkpoint: {'d_model: 64' in resolved}")
cfg = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
trained = sum(v.numel() for v in load_file(str(tuned / "adapter" / "adapter_model.safetensors")).values())
model = TransformerLM.from_pretrained(tuned)  # merged: base + B @ A * alpha / r
total = sum(p.numel() for p in model.parameters())
print(f"    adapter/: PEFT {cfg['peft_type']} r={cfg['r']} alpha={cfg['lora_alpha']} on {', '.join(cfg['target_modules'])}")
print(f"    trained {trained:,} of {total:,} parameters ({100 * trained / total:.1f}%)")
saved, start = load_file(str(tuned / "model.safetensors")), load_file(str(base / "model.safetensors"))
frozen = all(torch.equal(v, start[k.replace(".base_layer.", ".")]) for k, v in saved.items() if ".lora_" not in k)
print(f"    frozen weights bit-identical to the base: {frozen}")
print(f"    from_pretrained({tuned.name}): {type(model).__name__}, {total:,} parameters, adapters merged")
sys.exit(0 if frozen and ev[last] < ev[first] else 1)
PY
