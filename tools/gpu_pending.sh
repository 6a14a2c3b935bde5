#!/usr/bin/env bash
# The measurements issue 10 still needs, in one device call (about 9 minutes on one H200):
#   device run: command "bash tools/gpu_pending.sh", carry [".whl"], timeout 600
# Each step has its own time limit so the ones that finish still come back; JSON lands in $OUT.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/device.sh" env || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"; }
# 1. the decode kernels on this card (split-K attention with the fused new-token write, tuned skinny matmuls)
step kernels 80 python -m pytest packages/kernel/tests/test_triton_ops.py -q -p no:cacheprovider -k "skinny or decode"
tail -n 3 "$OUT/kernels.log"
# 2. tune the skinny matmul's tiles for this card (CUDA-graph timing, weights rotated past L2)
step tune 200 python packages/kernel/benchmarks/bench_decode_kernels.py --tune-skinny "$OUT/skinny_tiles.json"
grep -v "^  skip" "$OUT/tune.log" | tail -n 12
export LMSTACK_SKINNY_TILES="$OUT/skinny_tiles.json"
# 3. decode with the tuned skinny matmuls (bf16 and int8), then with inductor's GEMVs (bf16), same machine
export TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
step decode_skinny 200 python -m eval.bench decode --preset llama-1b --variants lmstack,lmstack-int8 --batch-sizes 1 \
  --repeat 2 --profile --linear-impl triton_skinny --prefer int8_linear=triton_skinny --out "$OUT/decode_skinny.json"
step decode_base 130 python -m eval.bench decode --preset llama-1b --variants lmstack --batch-sizes 1 \
  --repeat 2 --profile --out "$OUT/decode_base.json"
unset TORCHINDUCTOR_COORDINATE_DESCENT_TUNING
grep -h '"decode_tokens_per_s"\|fraction_of_roofline\|int8_speedup\|kernels_per_token\|kernel_us_per_token' \
  "$OUT"/decode_*.json
# 4. every decode kernel's bandwidth, graph-timed, with the tuned tiles
step decode_kernels 80 python packages/kernel/benchmarks/bench_decode_kernels.py --rows 1 --out "$OUT/decode_kernels.json"
tail -n 30 "$OUT/decode_kernels.log"
