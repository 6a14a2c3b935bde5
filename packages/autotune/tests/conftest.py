"""A fake trainer (stdlib only, starts in milliseconds) that speaks train.run's command line and logs a scripted
curve to ``<out_dir>/logs/scalars.csv``, and helpers to build study documents around it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEBUG_CFG = ROOT / "cfgs" / "debug.yaml"

# loss(step) = offset + 10 / step, one row every `delay` seconds, and beside it cost = 5 - offset + extra (a second
# objective that trades off against the loss; `extra` only makes it worse). Writes `start` and `end` wall times, its
# argv and CUDA_VISIBLE_DEVICES; `finished` is written only when the whole curve was logged (not if it was terminated).
FAKE_TRAIN = r'''
import json, os, sys, time
args = sys.argv[1:]
opts = {}
i = 0
while i < len(args):
    key = args[i][2:]
    if "=" in key:
        key, val = key.split("=", 1); i += 1
    else:
        val = args[i + 1]; i += 2
    opts[key] = val
out = opts["train.out_dir"]
os.makedirs(os.path.join(out, "logs"), exist_ok=True)
with open(os.path.join(out, "starts"), "a") as f:
    f.write(f"{time.time()!r}\n")
with open(os.path.join(out, "argv.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "device": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}, f)
if "fake.exit" in opts:
    print("error: fake.exit: asked to fail", file=sys.stderr)
    sys.exit(int(opts["fake.exit"]))
offset = float(opts.get("fake.offset", 0))
steps, delay = int(opts.get("fake.steps", 5)), float(opts.get("fake.delay", 0.02))
tag = opts.get("fake.tag", "loss")
with open(os.path.join(out, "logs", "scalars.csv"), "a") as f:
    f.write("step,tag,value,wall_time\n")
    for step in range(1, steps + 1):
        time.sleep(delay)
        value = float(opts["fake.value"]) if "fake.value" in opts else offset + 10 / step
        cost = 5 - offset + float(opts.get("fake.extra", 0))
        f.write(f"{step},lr,0.1,{time.time()}\n{step},{tag},{value!r},{time.time()}\n")
        f.write(f"{step},cost,{cost!r},{time.time()}\n")
        f.flush()
with open(os.path.join(out, "end"), "w") as f:
    f.write(repr(time.time()))
open(os.path.join(out, "finished"), "w").close()
'''


@pytest.fixture()
def fake(tmp_path):
    """A function building a study document that runs the fake trainer: ``fake(space=..., **fields)``."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    config = tmp_path / "fake.yaml"
    config.write_text("fake: {}\n")

    def make(**fields):
        doc = {"schema_version": 1, "name": "fake", "config": str(config), "command": ["python", str(script)],
               "objective": {"metric": "loss", "direction": "minimize"}, "sampler": "random", "poll_s": 0.02,
               "grace_s": 5, "trials": 2, "space": {"fake.offset": {"float": {"low": 0.0, "high": 1.0}}}}
        doc.update(fields)
        return doc

    return make
