#!/usr/bin/env bash
# Red-team a served model: run lmstack-safety's built-in suites against python -m serve's OpenAI-compatible chat
# endpoint, and write each report as JSON and Markdown (attack success rates with Wilson 95% intervals).
#
#   examples/redteam_serve.sh MODEL_DIR [SUITE...]      (run from the repo root)
#
# MODEL_DIR: any lmstack or Hugging Face Llama/GPT-2 directory with a tokenizer (and a chat template for system
# prompts; the byte and trained tokenizers have one). SUITE: builtin:injection (default), builtin:pii_leak,
# builtin:over_refusal, or a JSONL file. Environment: PYTHON (default python), PORT (default 8125), OUT (default
# runs/examples/redteam), MAX_TOKENS (default 32).
set -euo pipefail
PY=${PYTHON:-python}
PORT=${PORT:-8125}
OUT=${OUT:-runs/examples/redteam}
MODEL=${1:?usage: examples/redteam_serve.sh MODEL_DIR [SUITE...]}
shift
if [ $# -gt 0 ]; then SUITES=("$@"); else SUITES=(builtin:injection); fi
mkdir -p "$OUT"

echo "==> python -m serve --model $MODEL --port $PORT"
# shellcheck source=examples/serve_bg.sh
source "$(dirname "$0")/serve_bg.sh"
start_server "$MODEL" "$PORT" "$OUT/server.log" --max-batch-size 4

for suite in "${SUITES[@]}"; do
  name=${suite#builtin:}
  name=$(basename "${name%.jsonl}")
  echo "==> python -m safety redteam --suite $suite"
  "$PY" -m safety redteam --suite "$suite" --url "http://127.0.0.1:$PORT" --out "$OUT/$name.json" \
    --md "$OUT/$name.md" --workers 4 --max-tokens "${MAX_TOKENS:-32}"
done
