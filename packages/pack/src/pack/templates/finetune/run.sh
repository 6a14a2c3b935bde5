#!/usr/bin/env bash
# LoRA fine-tuning on this project's data/: base model -> tokenized data -> finetune.yaml -> a sample.
#
#   ./run.sh                               a stand-in base (base.yaml, trained here in seconds), then fine-tuning
#   BASE=path/to/model ./run.sh            an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory
#   BASE=registry:NAME@production ./run.sh a registry version (lmstack-registry)
#
# Environment: PYTHON (default python), BASE, STEPS (the stand-in base's steps, default base.yaml's), FT_STEPS
# (default finetune.yaml's train.steps), OUT (default runs/finetune), PROMPT. Extra arguments go to the fine-tuning
# run: ./run.sh --train.lr 1e-3
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=${OUT:-runs/finetune}
# shellcheck source=base.sh
source base.sh

echo "==> 2. data/: curated and tokenized with the base's own tokenizer into artifacts/shards"
"$PY" -m corpus.cli build --input data --outdir artifacts/shards --tokenizer artifacts/base --progress off \
  --overwrite >artifacts/corpus.log 2>&1 || { cat artifacts/corpus.log; exit 1; }
tail -n 1 artifacts/corpus.log | sed 's/^/    /'

echo "==> 3. LoRA fine-tuning: python -m train.run --config finetune.yaml"
"$PY" -m train.run --config finetune.yaml --train.out_dir "$OUT" ${FT_STEPS:+--train.steps "$FT_STEPS"} "$@"
TUNED=$(ls -d "$OUT"/checkpoints/step_* | tail -n 1)
echo "    checkpoint: $TUNED (adapters merged into model.safetensors; the PEFT adapter alone in $TUNED/adapter)"

echo "==> 4. a sample from the fine-tuned model"
"$PY" generate.py "$TUNED" --prompt "${PROMPT:-The lighthouse }" --max-new-tokens 48

echo "==> serve it: python -m serve --model $TUNED   (or the base with --adapter $TUNED/adapter)"
