"""rl's benchmark scripts run as written (tiny shapes, on the CPU), so they cannot rot between GPU sessions; in fp32
the DPO benchmark's two sides must agree step for step, which checks the TRL comparison the GPU figures rest on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_dpo_sides_agree_in_fp32(tmp_path):
    import bench_dpo

    doc = bench_dpo.main(["--preset", "llama-debug", "--pairs", "2", "--prompt", "16", "--completion", "16",
                          "--steps", "1", "--warmup", "3", "--rounds", "1", "--out", str(tmp_path / "dpo.json")])
    ours, theirs = doc["results"]["lmstack"], doc["results"]["trl+peft"]
    assert ours["warmup_losses"][0] == pytest.approx(0.693147, abs=1e-5)  # lora_B starts at zero: log 2
    assert ours["warmup_losses"][2] < ours["warmup_losses"][0]  # the adapters learn
    assert ours["warmup_losses"] == pytest.approx(theirs["warmup_losses"], rel=1e-5, abs=1e-6)
    assert ours["rows_x_tokens"] == theirs["rows_x_tokens"] == 4 * 32
    assert (tmp_path / "dpo.json").is_file() and doc["speedup"] > 0


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_bench_grpo_runs_both_trainers(tmp_path, method):
    import bench_grpo

    doc = bench_grpo.main(["--preset", "llama-debug", "--prompts", "2", "--generations", "2", "--completion", "6",
                           "--steps", "2", "--method", method])
    assert set(doc["results"]) == {"trl", "lmstack-generate", "lmstack-paged"}
    assert set(doc["speedup"]) == {"lmstack-generate", "lmstack-paged"}
    for side in doc["results"]:
        r = doc["results"][side]
        assert r["step_s"] > 0 and 1 <= r["mean_completion_tokens"] <= 6
        assert r["sampled_tokens_per_s"] == pytest.approx(4 * r["mean_completion_tokens"] / r["step_s"])


def test_bench_arguments_are_checked(capsys):
    import bench_dpo

    with pytest.raises(SystemExit):
        bench_dpo.main(["--pairs", "0"])
    assert "must be >= 1, got 0" in capsys.readouterr().err
