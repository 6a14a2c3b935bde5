#!/usr/bin/env bash
# One device call (about 9 minutes on one H200) for issue 10's decode figures:
#   device run: command "bash tools/gpu_pending.sh", carry [".whl"], timeout 600
# Each step has its own time limit so the ones that finish still come back; JSON lands in $OUT.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/device.sh" env || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"; }
# 1. the decode kernels on this card: skinny/GLU matmuls, split + fused new-token decode attention; graph replay
step kernels 100 python -m pytest packages/kernel/tests/test_triton_ops.py -q -p no:cacheprovider \
  -k "skinny or decode or swiglu_linear"
tail -n 3 "$OUT/kernels.log"
step graphs 90 python -m pytest packages/serve/tests/test_graphs.py -q -p no:cacheprovider -m gpu
tail -n 3 "$OUT/graphs.log"
# 2. decode at batch 1 and 32, bf16 and int8, against transformers' static-cache generate, same machine
export TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
step decode 330 python -m eval.bench decode --preset llama-1b --variants lmstack,lmstack-int8,transformers \
  --batch-sizes 1,32 --repeat 2 --profile --out "$OUT/decode.json"
grep -h '"decode_tokens_per_s"\|fraction_of_roofline\|int8_speedup\|kernels_per_token\|kernel_us_per_token\|agreement' \
  "$OUT"/decode.json
tail -n 5 "$OUT/decode.log"
