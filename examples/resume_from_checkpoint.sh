#!/usr/bin/env bash
# Resume from a checkpoint and continue exactly where the run stopped: same losses, same final weights.
#
#   examples/resume_from_checkpoint.sh [OUT]         (default OUT=runs/examples/resume; run from the repo root)
#
# 1. A reference run trains cfgs/debug.yaml for $STEPS steps without stopping (checkpoints every $STEPS/2).
# 2. A second run directory holds only the mid-run checkpoint, as if the job had died right after it
#    (preempted, OOM-killed, SIGTERM: the trainer also checkpoints on SIGTERM/Ctrl-C before exiting).
# 3. `--train.resume auto` picks the newest complete checkpoint there and restores weights, optimizer, LR schedule,
#    RNG streams and the data loader's position, then trains to $STEPS.
# 4. The per-step losses after the resume point and the final weights' sha256 are compared with the reference:
#    they are identical, bit for bit (fp32 on CPU).
# Environment: PYTHON (default python), STEPS (default 40, even).
set -euo pipefail
OUT=${1:-runs/examples/resume}
PY=${PYTHON:-python}
STEPS=${STEPS:-40}
HALF=$((STEPS / 2))
COMMON=(--config cfgs/debug.yaml --train.steps "$STEPS" --train.ckpt_every "$HALF" --train.keep_last 5
        --train.eval_every 0 --train.log_every 1 --viz.log_every 1 --train.callbacks '')  # '': no trainer callbacks (governance files are not the point here)
rm -rf "$OUT"
mkdir -p "$OUT"

echo "==> 1. reference run: $STEPS steps straight"
"$PY" -m train.run "${COMMON[@]}" --train.out_dir "$OUT/reference" 2>"$OUT/reference.log" || {
  cat "$OUT/reference.log"; exit 1; }

echo "==> 2. a run that stopped after step $HALF"
CKPT=$(printf 'step_%08d' "$HALF")
mkdir -p "$OUT/resumed/checkpoints"
cp -r "$OUT/reference/checkpoints/$CKPT" "$OUT/resumed/checkpoints/"

echo "==> 3. python -m train.run ... --train.resume auto"
"$PY" -m train.run "${COMMON[@]}" --train.out_dir "$OUT/resumed" --train.resume auto 2>"$OUT/resumed.log" || {
  cat "$OUT/resumed.log"; exit 1; }
grep -m1 "resumed from" "$OUT/resumed.log" | sed 's/^.* INFO /    /'

echo "==> 4. compare"
"$PY" - "$OUT" "$HALF" "$STEPS" <<'PY'
import csv, hashlib, sys
from pathlib import Path

out, half, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def losses(run):
    with open(out / run / "logs" / "scalars.csv", newline="") as f:
        return {int(r["step"]): r["value"] for r in csv.DictReader(f) if r["tag"] == "loss"}

def weights(run):
    return hashlib.sha256((out / run / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").read_bytes()).hexdigest()

ref, res = losses("reference"), losses("resumed")
print(f"{'step':>6} {'reference loss':>22} {'resumed loss':>22}")
same = True
for step in range(half + 1, steps + 1):
    same &= ref.get(step) == res.get(step)
    print(f"{step:>6} {ref.get(step, '-'):>22} {res.get(step, '-'):>22}{'' if ref.get(step) == res.get(step) else '  <-- differs'}")
same &= min(res) == half + 1  # the resumed run started after the checkpoint, not from scratch
w_ref, w_res = weights("reference"), weights("resumed")
print(f"final weights sha256: reference {w_ref[:16]}..., resumed {w_res[:16]}...")
print("identical: losses after the resume and final weights" if same and w_ref == w_res else "MISMATCH")
sys.exit(0 if same and w_ref == w_res else 1)
PY
