#!/usr/bin/env bash
# FSDP under torchrun on 2 CPU processes (gloo), checked against a single-process run of the same config.
#
#   examples/fsdp_torchrun.sh [OUT]          (default OUT=runs/examples/fsdp; run from the repo root)
#
# The seed's 8-GPU command at laptop scale: torchrun starts 2 ranks that shard parameters, gradients and optimizer
# state with FSDP2 (torch.distributed.fsdp.fully_shard) over the gloo backend. On GPUs the same line with
# --nproc_per_node=8 --dist.backend nccl --dist.precision bf16 is the seed's quickstart 1.
# Every rank reads the same global batch stream and keeps its half of each batch, so the run computes the same
# losses as one process (up to float summation order); the script trains both and compares the curves and the
# final weights, and lists what each rank wrote into the checkpoint (its optimizer shard, RNG and loader state).
# Environment: PYTHON (default python), TORCHRUN (default torchrun), STEPS (default 20), NPROC (default 2).
set -euo pipefail
OUT=${1:-runs/examples/fsdp}
PY=${PYTHON:-python}
TORCHRUN=${TORCHRUN:-torchrun}
STEPS=${STEPS:-20}
NPROC=${NPROC:-2}
COMMON=(--config cfgs/debug.yaml --train.steps "$STEPS" --train.eval_every 0 --train.ckpt_every 0
        --train.log_every 5 --viz.log_every 1)
rm -rf "$OUT"
mkdir -p "$OUT"

echo "==> 1. torchrun --nproc_per_node=$NPROC -m train.run --config cfgs/debug.yaml --dist.strategy FSDP"
"$TORCHRUN" --nproc_per_node="$NPROC" --log-dir "$OUT/torchrun" --tee 3 -m train.run "${COMMON[@]}" \
  --dist.strategy FSDP --dist.backend gloo --train.out_dir "$OUT/fsdp" 2>&1 | grep -v ' kernel INFO '
CKPT=$(printf '%s/fsdp/checkpoints/step_%08d' "$OUT" "$STEPS")
echo "    per-rank state in $CKPT: $(cd "$CKPT" && ls optimizer/* rng/* data/* | tr '\n' ' ')"

echo "==> 2. the same config in one process"
"$PY" -m train.run "${COMMON[@]}" --train.out_dir "$OUT/single" >"$OUT/single.log" 2>&1 || { cat "$OUT/single.log"; exit 1; }

echo "==> 3. compare"
"$PY" - "$OUT" "$STEPS" <<'PY'
import csv, sys
from pathlib import Path

from model.lm import TransformerLM

out, steps = Path(sys.argv[1]), int(sys.argv[2])

def losses(run):
    with open(out / run / "logs" / "scalars.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["tag"] == "loss"}

fsdp, single = losses("fsdp"), losses("single")
loss_diff = max(abs(fsdp[s] - single[s]) for s in single)
print(f"step {steps}: loss FSDP x2 {fsdp[steps]:.6f} | one process {single[steps]:.6f}; "
      f"max |diff| over {len(single)} steps {loss_diff:.1e}")
a = TransformerLM.from_pretrained(out / "fsdp" / "checkpoints" / f"step_{steps:08d}").state_dict()
b = TransformerLM.from_pretrained(out / "single" / "checkpoints" / f"step_{steps:08d}").state_dict()
w_diff = max((a[k] - b[k]).abs().max().item() for k in b)
print(f"final weights (FSDP shards gathered into one model.safetensors): max |diff| {w_diff:.1e}")
ok = len(fsdp) == len(single) == steps and loss_diff < 1e-4 and w_diff < 1e-4
print("FSDP matches the single-process run" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
