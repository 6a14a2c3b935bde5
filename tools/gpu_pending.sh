#!/usr/bin/env bash
# The measurements issue 10 still needs, in one device call (about 10 minutes on one H200):
#   device run: command "bash tools/gpu_pending.sh", carry [".whl"], timeout 600
# Each step has its own time limit so the ones that finish still come back; JSON lands in $OUT.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/device.sh" env || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"; }
# 1. the new kernels on this card (correctness first)
step kernels 60 python -m pytest packages/kernel/tests/test_triton_ops.py -q -p no:cacheprovider -k "skinny or decode"
tail -n 2 "$OUT/kernels.log"
# 2. every decode kernel's bandwidth at the 1.1B shapes (cuBLAS, Triton GEMV, skinny, SDPA vs Triton attention)
step decode_kernels 110 python packages/kernel/benchmarks/bench_decode_kernels.py --out "$OUT/decode_kernels.json"
tail -n 40 "$OUT/decode_kernels.log"
# 3. decode: F.linear (baseline) and the skinny kernels (candidate), bf16 and int8, same machine
export TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
step decode_base 160 python -m eval.bench decode --preset llama-1b --variants lmstack,lmstack-int8 --batch-sizes 1 \
  --repeat 2 --profile --out "$OUT/decode_base.json"
step decode_skinny 160 python -m eval.bench decode --preset llama-1b --variants lmstack,lmstack-int8 --batch-sizes 1 \
  --repeat 2 --profile --linear-impl triton_skinny --prefer int8_linear=triton_skinny --out "$OUT/decode_skinny.json"
unset TORCHINDUCTOR_COORDINATE_DESCENT_TUNING
grep -h '"decode_tokens_per_s"\|fraction_of_roofline\|int8_speedup' "$OUT"/decode_*.json
# 4. the Trainer's host time per step on the GPU (after the local-shard optimizer / one-graph compile changes)
step step_overhead 90 python packages/train/benchmarks/bench_step_overhead.py --device cuda --full --compile
tail -n 15 "$OUT/step_overhead.log"
