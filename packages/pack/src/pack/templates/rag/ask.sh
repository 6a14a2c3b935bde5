#!/usr/bin/env bash
# Answer a question from docs/: the best chunks go to a served model as numbered sources, which it cites as [n].
#
#   URL=http://127.0.0.1:8000 ./ask.sh "How often is the lens cleaned?"   a server already running (any OpenAI one)
#   MODEL=path/to/checkpoint ./ask.sh "How often is the lens cleaned?"    start python -m serve on it, then ask
#
# MODEL: an lmstack checkpoint or Hugging Face Llama / GPT-2 directory whose context holds the sources
# (MAX_SOURCE_CHARS cuts them). A tiny model's answer is noise; a real chat model's is the grounded answer.
# Environment: PYTHON (default python), URL or MODEL, MODEL_NAME (default local), PORT (default 8124), K (default 3),
# MAX_SOURCE_CHARS (default 600), MAX_TOKENS (default 64).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
QUESTION=${1:?usage: ./ask.sh "QUESTION"  (with URL=... or MODEL=... set)}
URL=${URL:-}
if [ -z "$URL" ]; then
  MODEL=${MODEL:?set URL to a running server or MODEL to a checkpoint to serve}
  PORT=${PORT:-8124}
  URL="http://127.0.0.1:$PORT"
  mkdir -p artifacts
  "$PY" -m serve --model "$MODEL" --model-name "${MODEL_NAME:-local}" --port "$PORT" --max-batch-size 2 \
    >artifacts/server.log 2>&1 &
  SERVER=$!
  trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do  # model load + server start: a few seconds
    "$PY" -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { echo "server exited:"; cat artifacts/server.log; exit 1; }
    sleep 0.5
  done
fi
"$PY" -m rag ask artifacts/index "$QUESTION" --url "$URL" --model "${MODEL_NAME:-local}" -k "${K:-3}" \
  --max-tokens "${MAX_TOKENS:-64}" --max-source-chars "${MAX_SOURCE_CHARS:-600}" --json
