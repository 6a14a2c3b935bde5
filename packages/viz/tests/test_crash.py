"""A run killed with SIGKILL (no close, no atexit) leaves CSV/JSONL logs that parse up to the last flush."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from viz.readers import load_scalars, read_csv, read_jsonl

CHILD = textwrap.dedent("""
    import sys, time
    from specs.config import VizConfig
    from viz.session import VizSession
    viz = VizSession(VizConfig(backend=("csv", "jsonl")), sys.argv[1], flush_every=10, flush_secs=1e9)
    for step in range(25):  # 20 records flushed in two batches, 5 still buffered
        viz.log_scalars(step, {"loss": 1.0 / (step + 1), "lr": 1e-3})
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.dist
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkilled_run_leaves_readable_logs(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    rows = read_csv(tmp_path / "scalars.csv")
    assert sorted({s for s, *_ in rows}) == list(range(20))
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(20))
    (run,) = load_scalars(tmp_path)
    assert run.series["loss"][-1] == (19, 1.0 / 20)
