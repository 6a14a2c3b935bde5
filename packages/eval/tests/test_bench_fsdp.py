"""``python -m eval.bench fsdp``: real ``torchrun -m train.run`` runs on 1 and 2 gloo processes, their logged
throughput turned into per-GPU figures and scaling efficiency; bad options and failing runs are clear errors."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

from eval.bench.__main__ import main
from eval.bench.fsdp import parse_gpus, summarize

TINY = ["fsdp", "--preset", "llama-debug", "--device", "cpu", "--seq", "32", "--micro-batch", "2", "--steps", "6",
        "--log-every", "2", "--warmup", "2", "--no-compile", "--precision", "fp32"]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's directory for this test only, to see what the bench leaves behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.dist
def test_one_and_two_gloo_processes(capsys, private_tmp):
    from model.lm import TransformerLM
    from specs.presets import preset

    out = private_tmp / "fsdp.json"
    assert main([*TINY, "--gpus", "2,1", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    r = doc["results"]
    runs = {x["gpus"]: x for x in r["runs"]}
    assert sorted(runs) == [1, 2] and r["baseline_gpus"] == 1 and r["strategy"] == "FSDP"
    assert r["params"] == sum(p.numel() for p in TransformerLM(preset("llama-debug")).parameters())
    for n, x in runs.items():
        assert x["params"] == r["params"] and x["device"] == "cpu" and x["global_batch_rows"] == 2 * n
        assert x["strategy"] == "FSDP" and x["precision"] == "fp32"  # as train.run reported them
        assert x["tokens_per_s"] > 0 and x["step_time_s"] > 0 and x["mfu"] is None  # CPU: no peak FLOP/s
        assert x["tokens_per_s_per_gpu"] == pytest.approx(x["tokens_per_s"] / n)
        # tokens the trainer counted per optimizer step (tokens_seen / step): micro-batch x seq x world size
        assert x["tokens_per_step"] == 2 * 32 * n == x["expected_tokens_per_step"]
        assert x["windows"] == 2 == len(x["tokens_per_s_windows"])  # steps 3-4 and 5-6; 1-2 is warm-up
        assert x["tokens_per_s"] == pytest.approx(sum(x["tokens_per_s_windows"]) / 2)  # median of two
        assert x["final_loss"] > 0 and f"--nproc-per-node={n}" in x["command"]
    assert runs[1]["scaling_efficiency"] == 1.0
    assert runs[2]["scaling_efficiency"] == pytest.approx(runs[2]["tokens_per_s_per_gpu"] /
                                                          runs[1]["tokens_per_s_per_gpu"])
    assert r["work_dir"] is None and not list(private_tmp.glob("lmstack-bench-fsdp-*"))  # temp runs removed


@pytest.mark.dist
def test_plain_one_process_baseline(capsys, private_tmp):
    assert main([*TINY, "--gpus", "1", "--baseline-strategy", "none", "--precision", "bf16"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["results"]["runs"]
    assert run["strategy"] == "none" and run["precision"] == "bf16" and run["tokens_per_step"] == 64
    assert run["scaling_efficiency"] == 1.0


@pytest.mark.dist
def test_a_failing_run_reports_its_error_and_keeps_its_log(capsys, private_tmp):
    argv = [*TINY, "--gpus", "1", "--data", "config", "--set", "data.path=/nonexistent/shards", "--keep"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: torchrun -m train.run on 1 process(es) exited with status")
    assert "error: data.path: /nonexistent/shards does not exist" in err  # the rank's own message, not a traceback
    (kept,) = private_tmp.glob("lmstack-bench-fsdp-*")
    assert "does not exist" in (kept / "gpus_1" / "output.log").read_text()


@pytest.mark.dist
def test_a_run_past_its_timeout_is_stopped(capsys, private_tmp):
    assert main([*TINY, "--gpus", "2", "--steps", "100000", "--timeout", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: torchrun -m train.run on 2 process(es) did not finish in 2 s")
    assert not list(private_tmp.glob("lmstack-bench-fsdp-*"))


def test_bad_options_fail_before_launching(capsys, fails_with, private_tmp):
    cases = [(["--gpus", "0"], "error: --gpus: expected comma-separated process counts >= 1"),
             (["--gpus", "1,x"], "error: --gpus:"),
             (["--steps", "3"], "error: --steps: 3 leaves no logged window after --warmup 2"),
             (["--micro-batch", "0"], "argument --micro-batch: must be >= 1, got 0"),
             (["--set", "train.steps"], "error: --set: expected SECTION.FIELD=VALUE"),
             (["--set", "train.no_such_field=1"], "error: train.no_such_field"),
             (["--strategy", "FSDP3"], "error: dist.strategy")]
    for extra, message in cases:
        fails_with([*TINY, *extra], message)
    with pytest.raises(SystemExit):  # argparse: a preset or a config, not both
        main([*TINY, "--config", "cfgs/debug.yaml"])
    assert "not allowed with argument --preset" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*TINY, "--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: device: 'cuda' was asked for but CUDA is not available")
    assert not list(private_tmp.glob("lmstack-bench-fsdp-*"))


def test_parse_gpus_sorts_and_dedupes():
    assert parse_gpus("4, 1,2,1") == [1, 2, 4]


def test_summarize_drops_warmup_windows_and_takes_medians():
    rows = [(5, {"tokens_per_s": 10.0, "step_time_s": 9.0, "tokens_seen": 500.0, "mem/max_allocated_gib": 3.0}),
            (10, {"tokens_per_s": 400.0, "step_time_s": 0.3, "tokens_seen": 1000.0, "mem/max_allocated_gib": 5.0}),
            (15, {"tokens_per_s": 100.0, "step_time_s": 0.5, "tokens_seen": 1500.0, "mem/max_allocated_gib": 4.0,
                  "mfu": 0.4}),
            (20, {"tokens_per_s": 300.0, "step_time_s": 0.2, "tokens_seen": 2000.0, "loss": 2.5, "mfu": 0.5})]
    s = summarize(rows, 4, log_every=5, warmup=5)  # the window ending at step 5 is warm-up
    assert s["windows"] == 3 and s["tokens_per_s_windows"] == [400.0, 100.0, 300.0]
    assert s["tokens_per_s"] == 300.0 and s["tokens_per_s_per_gpu"] == 75.0 and s["step_time_s"] == 0.3
    assert s["mfu"] == pytest.approx(0.45) and s["peak_allocated_gib"] == 5.0 and s["peak_reserved_gib"] is None
    assert s["tokens_per_step"] == 100.0 and s["final_loss"] == 2.5
    with pytest.raises(Exception, match="no window after step 20"):
        summarize(rows, 4, log_every=5, warmup=20)
