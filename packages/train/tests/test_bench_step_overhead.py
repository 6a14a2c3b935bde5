"""The host-time benchmark script runs on a CPU and reports what it says it reports (phases, aten ops, the top host
functions), so the GPU figures in docs/benchmarks.md come from code that is exercised here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step_overhead.py"


def test_step_overhead_reports_phases_aten_ops_and_host_top():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(SCRIPT), "--steps", "2", "--warmup", "1", "--strategies", "bare,none",
                          "--host-top", "4", "--profile"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout[out.stdout.index("\n{") + 1:])  # the human summary lines come first
    for name in ("bare", "none"):
        r = doc[name]
        phases = r["ms"]
        assert set(phases) >= {"forward", "backward", "optimizer", "total"}
        assert phases["total"] >= phases["forward"] + phases["backward"] > 0
        assert r["aten_ops"] > 100  # a 12-block model's forward and backward
        top = r["host_top"]
        assert len(top) == 4 and all(t["self_host_ms"] > 0 and t["calls"] > 0 for t in top)
        assert [t["self_host_ms"] for t in top] == sorted((t["self_host_ms"] for t in top), reverse=True)
    assert doc["none"]["ms"]["clip"] > 0 and doc["bare"]["ms"]["clip"] == 0  # the Trainer clips, the bare loop not
