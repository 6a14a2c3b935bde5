#!/usr/bin/env bash
# Serve a checkpoint with lmstack's OpenAI-compatible server, guarded by policy.yaml.
#
#   MODEL=path/to/checkpoint ./serve.sh        an lmstack checkpoint or a Hugging Face Llama / GPT-2 directory
#   MODEL=registry:NAME@production ./serve.sh  a registry version (lmstack-registry)
#   ./serve.sh                                 no MODEL: trains the stand-in tiny.yaml first (seconds on a CPU)
#
# Then, from another shell: python client.py "Hello"   (or any OpenAI client with base_url http://HOST:PORT/v1)
# Environment: PYTHON (default python), MODEL, MODEL_NAME (default local), HOST (default 127.0.0.1; 0.0.0.0 to
# listen on the network, then also set LMSTACK_API_KEY), PORT (default 8000), POLICY (default policy.yaml).
# Extra arguments go to python -m serve: ./serve.sh --max-batch-size 8 --device cuda
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then
  echo "==> no MODEL given: training the stand-in tiny.yaml into runs/tiny" >&2
  rm -rf runs/tiny
  mkdir -p artifacts
  "$PY" -m train.run --config tiny.yaml ${STEPS:+--train.steps "$STEPS"} >artifacts/tiny.log 2>&1 || {
    cat artifacts/tiny.log; exit 1; }
  MODEL=$(ls -d runs/tiny/checkpoints/step_* | tail -n 1)
fi
echo "==> python -m serve --model $MODEL --guard policy:${POLICY:-policy.yaml} on ${HOST:-127.0.0.1}:${PORT:-8000}" >&2
exec "$PY" -m serve --model "$MODEL" --model-name "${MODEL_NAME:-local}" --host "${HOST:-127.0.0.1}" \
  --port "${PORT:-8000}" --guard "policy:${POLICY:-policy.yaml}" "$@"
