#!/usr/bin/env bash
# Train config.yaml, measure the held-out perplexity of the last checkpoint, and sample text from it.
#
#   ./run.sh                  (from anywhere; the project directory is the working directory)
#
# Environment: PYTHON (default python), STEPS (default: config.yaml's train.steps), OUT (default runs/pretrain),
# PROMPT (default "def "). Any other train.run option can follow: ./run.sh --train.lr 1e-3
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=${OUT:-runs/pretrain}
ARGS=(--config config.yaml --train.out_dir "$OUT")
if [ -n "${STEPS:-}" ]; then
  ARGS+=(--train.steps "$STEPS" --train.eval_every 0 --train.ckpt_every 0)
fi

echo "==> 1. train: python -m train.run ${ARGS[*]} $*"
"$PY" -m train.run "${ARGS[@]}" "$@"
CKPT=$(ls -d "$OUT"/checkpoints/step_* | tail -n 1)
echo "    checkpoint: $CKPT"

echo "==> 2. held-out perplexity"
"$PY" evaluate.py "$CKPT"

echo "==> 3. a sample"
"$PY" generate.py "$CKPT" --prompt "${PROMPT:-def }" --max-new-tokens 48

echo "==> serve it: python -m serve --model $CKPT --port 8000   (OpenAI-compatible: /v1/completions)"
