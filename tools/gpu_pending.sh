#!/usr/bin/env bash
# What issue 10 should measure next, in one device call (about 9 minutes on one H200):
#   device run: command "bash tools/gpu_pending.sh", carry [".whl"], timeout 600
# Each step has its own time limit so the ones that finish still come back; JSON lands in $OUT.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/device.sh" env || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"; }
# 1. where the Trainer's FSDP2 step spends its host time at 124M (host time = step time there: a wait or
#    per-parameter work); the top host functions by self time, CUDA runtime calls included
step step_overhead 120 python packages/train/benchmarks/bench_step_overhead.py --device cuda --full --compile \
  --strategies none,FSDP --steps 20 --host-top 25
grep -v '^ *["{}\[\],]' "$OUT/step_overhead.log" | tail -n 60
#    ... and with four blocks per FSDP unit (dist.fsdp_unit_blocks: FSDP2's hooks run per unit)
step step_overhead_units 80 python packages/train/benchmarks/bench_step_overhead.py --device cuda --full --compile \
  --strategies FSDP --steps 20 --fsdp-unit-blocks 4
grep "FSDP:" "$OUT/step_overhead_units.log"
# (then, on nvidia-h200-x2: python -m eval.bench fsdp --preset gpt2-124m --micro-batch 16 --set dist.fsdp_unit_blocks=4)
# 2. the GPT-2 124M training step against transformers (target 1.5x, 45% MFU)
step train_compare 220 python -m eval.bench train-compare --preset gpt2-124m --variants lmstack,lmstack-fused,transformers \
  --out "$OUT/train_compare.json"
grep -h 'tokens_per_s"\|mfu\|ratio\|speedup' "$OUT/train_compare.json" | head -n 12
# 3. serving with the fused decode attention (RoPE + cache write + split-K attention in one kernel)
step engine 150 python -m eval.bench engine --preset llama-1b --out "$OUT/engine.json"
grep -h 'tokens_per_s"\|speedup\|p50\|p99' "$OUT/engine.json" | head -n 16
