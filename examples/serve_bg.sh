# Sourced by the examples that need a running server: start_server MODEL_DIR PORT LOG [serve args...] starts
# `python -m serve` in the background, stops it when the calling script exits (even on error), and returns once
# /health answers (or fails with the server's log). Uses $PY.
start_server() {
  local model=$1 port=$2 log=$3
  shift 3
  "$PY" -m serve --model "$model" --model-name tiny --port "$port" "$@" >"$log" 2>&1 &
  SERVER=$!
  trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do  # model load + uvicorn start: a few seconds
    "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null && return 0
    kill -0 "$SERVER" 2>/dev/null || { echo "server exited:"; cat "$log"; exit 1; }
    sleep 0.5
  done
  echo "server did not come up:"; cat "$log"; exit 1
}
