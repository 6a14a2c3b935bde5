#!/usr/bin/env bash
# Serve a checkpoint with the OpenAI-compatible server and query it with curl, streaming included.
#
#   examples/serve_and_query.sh [MODEL_DIR]      (run from the repo root)
#
# MODEL_DIR: any lmstack or Hugging Face Llama/GPT-2 directory with a tokenizer beside the weights. Default:
# runs/example/model when `python example.py` has made it, else a 30-step cfgs/debug.yaml run trained first.
# The server (python -m serve) runs in the background on 127.0.0.1:$PORT and is stopped on exit, even on error.
# Environment: PYTHON (default python), PORT (default 8123), OUT (default runs/examples/serve).
set -euo pipefail
PY=${PYTHON:-python}
PORT=${PORT:-8123}
OUT=${OUT:-runs/examples/serve}
URL="http://127.0.0.1:$PORT"
MODEL=${1:-}
mkdir -p "$OUT"
if [ -z "$MODEL" ] && [ -f runs/example/model/config.json ]; then
  MODEL=runs/example/model
elif [ -z "$MODEL" ]; then
  echo "==> no model given: training cfgs/debug.yaml for 30 steps into $OUT/run"
  "$PY" -m train.run --config cfgs/debug.yaml --train.out_dir "$OUT/run" --train.steps 30 --train.eval_every 0 \
    --train.ckpt_every 0 >"$OUT/train.log" 2>&1 || { cat "$OUT/train.log"; exit 1; }
  MODEL=$(ls -d "$OUT"/run/checkpoints/step_* | tail -n 1)
fi

echo "==> python -m serve --model $MODEL --port $PORT"
"$PY" -m serve --model "$MODEL" --model-name tiny --port "$PORT" --max-batch-size 4 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do  # model load + uvicorn start: a few seconds
  curl -sf "$URL/health" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { echo "server exited:"; cat "$OUT/server.log"; exit 1; }
  sleep 0.5
done
curl -sf "$URL/health" >/dev/null || { echo "server did not come up:"; cat "$OUT/server.log"; exit 1; }

echo "==> GET /v1/models"
curl -sS "$URL/v1/models"; echo

echo "==> POST /v1/completions (greedy)"
curl -sS "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny", "prompt": "def __init__(self", "max_tokens": 16, "temperature": 0}'; echo

echo "==> POST /v1/completions (streaming: server-sent events, ending with data: [DONE])"
curl -sSN "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny", "prompt": "import ", "max_tokens": 8, "temperature": 0.8, "seed": 0, "stream": true}'

echo "==> POST /v1/chat/completions (streaming, with usage)"
curl -sSN "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "seed": 0,
       "stream": true, "stream_options": {"include_usage": true}}'

echo "==> GET /metrics (Prometheus, first lines)"
# Fetch first, then trim in one process: `... | head` can kill the writer with SIGPIPE (exit 141 under pipefail).
metrics=$(curl -sS "$URL/metrics")
awk '!/^#/ && n++ < 5' <<<"$metrics"
