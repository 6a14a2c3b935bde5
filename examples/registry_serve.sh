#!/usr/bin/env bash
# From a training run to a served production model through the registry: register the run's checkpoints as
# versions, sign one, promote it to production behind a signature gate and an eval bound, then serve
# registry:NAME@production with only signed versions admitted, and query it.
#
#   examples/registry_serve.sh RUN_DIR      (run from the repo root; RUN_DIR: a train.run out_dir)
#
# Environment: PYTHON (default python), PORT (default 8126), OUT (default runs/examples/registry).
set -euo pipefail
PY=${PYTHON:-python}
PORT=${PORT:-8126}
OUT=${OUT:-runs/examples/registry}
RUN=${1:?usage: examples/registry_serve.sh RUN_DIR}
export LMSTACK_REGISTRY="$OUT/registry"
mkdir -p "$OUT"
rm -rf "$LMSTACK_REGISTRY" "$OUT/keys"

echo "==> python -m registry register (every checkpoint of $RUN)"
for ckpt in "$RUN"/checkpoints/step_*; do
  step=${ckpt##*_}
  "$PY" -m registry register tiny "$ckpt" --metadata "{\"step\": $((10#$step))}"
done
"$PY" -m registry list tiny

echo "==> python -m registry keygen, sign, trust"
"$PY" -m registry keygen "$OUT/keys"
"$PY" -m registry sign tiny latest --key "$OUT/keys/ed25519.pem"
"$PY" -m registry trust "$OUT/keys/ed25519.pub.pem"

echo "==> python -m registry promote (signature gate, step >= 1)"
"$PY" -m registry promote tiny latest production --reason "the last checkpoint" --require-signature \
  --require "step>=1"

echo "==> python -m serve --model registry:tiny@production (signed versions only)"
# shellcheck source=examples/serve_bg.sh
source "$(dirname "$0")/serve_bg.sh"
LMSTACK_REGISTRY_PUBKEY=trusted start_server "registry:tiny@production" "$PORT" "$OUT/server.log" --max-batch-size 2

echo "==> POST /v1/completions"
"$PY" - "$PORT" <<'PYEOF'
import json, sys, urllib.request
body = json.dumps({"model": "tiny", "prompt": "def ", "max_tokens": 8, "temperature": 0}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions", data=body,
                             headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=60).read().decode())
PYEOF

echo "==> python -m registry history tiny"
"$PY" -m registry history tiny
