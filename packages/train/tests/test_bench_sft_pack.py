"""benchmarks/bench_sft_pack.py runs as written at a tiny shape on the CPU, so it cannot rot between GPU sessions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_sft_pack_runs_both_ways(tmp_path):
    import bench_sft_pack

    doc = bench_sft_pack.main(["--seq-len", "256", "--rows", "2", "--conversations", "24", "--min", "10",
                               "--max", "120", "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "b.json")])
    one, packed = doc["results"]["one a row"], doc["results"]["packed"]
    assert one["conversations"] == packed["conversations"] == 24 and one["rows"] == 24
    assert packed["rows"] < 24 and packed["real_token_share"] > one["real_token_share"]
    assert doc["speedup"] > 0 and (tmp_path / "b.json").is_file()
    with pytest.raises(SystemExit):
        bench_sft_pack.main(["--seq-len", "128", "--max", "100"])
