"""torch.profiler Chrome traces on CPU, and CUDA memory figures (empty without CUDA)."""

from __future__ import annotations

import json

import pytest
import torch

from viz.memory import GiB, cuda_memory_stats
from viz.profiler import StepProfiler
from viz.session import VizSession


def _train_step(model, opt):
    loss = model(torch.randn(4, 8)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def test_session_writes_valid_chrome_traces(tmp_path, tiny_net, viz_cfg):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    cfg = viz_cfg(backend=("csv",), profile_every_n_steps=4, profile_steps=2)
    with VizSession(cfg, tmp_path) as viz:
        for step in range(1, 10):
            viz.on_step(None, step, {"loss": _train_step(tiny_net, opt)})
        traces = list(viz.profiler.traces)
    # warm-up on step 3, steps 4-5 recorded; warm-up on 7, steps 8-9 recorded
    assert [p.name for p in traces] == ["step_00000004.pt.trace.json", "step_00000008.pt.trace.json"]
    assert sorted((tmp_path / "profiles").iterdir()) == traces  # nothing else (no temp files) left behind
    doc = json.loads(traces[0].read_text())
    events = doc["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("aten::addmm") for n in names)  # the Linear layers' forward
    assert sum(n.startswith("ProfilerStep#") for n in names) == 2  # exactly the recorded steps
    assert all("ph" in e for e in events)  # Chrome trace event format: every event has a phase


def test_profiler_off_and_unfinished_window(tmp_path, tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    off = StepProfiler(tmp_path / "off", every=0)
    for step in range(5):
        _train_step(tiny_net, opt)
        off.after_step(step)
        assert not off.active
    cut = StepProfiler(tmp_path / "cut", every=3, steps=3)
    for step in range(4):  # starts after step 1, warm-up 2, records 3 ... closed before the window ends
        _train_step(tiny_net, opt)
        cut.after_step(step)
    assert cut.active
    cut.close()
    assert not cut.active and not (tmp_path / "cut").exists()


def test_cuda_memory_is_empty_without_cuda():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is initialised here")
    assert cuda_memory_stats() == {}


def test_cuda_memory_figures_in_gib(monkeypatch, tmp_path, viz_cfg):
    stats = {"allocated_bytes.all.current": 2 * GiB, "allocated_bytes.all.peak": 3 * GiB,
             "reserved_bytes.all.current": 4 * GiB, "reserved_bytes.all.peak": 5 * GiB, "num_alloc_retries": 7}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: stats)
    assert cuda_memory_stats() == {"mem/allocated_gib": 2.0, "mem/max_allocated_gib": 3.0, "mem/reserved_gib": 4.0,
                                   "mem/max_reserved_gib": 5.0, "mem/alloc_retries": 7.0, "mem/ooms": 0.0}
    from viz.readers import load_scalars

    with VizSession(viz_cfg(backend=("csv",), log_every=1), tmp_path) as viz:
        viz.on_step(None, 1, {"loss": 1.0})
    (run,) = load_scalars(tmp_path)
    assert run.series["mem/max_allocated_gib"] == [(1, 3.0)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_on_a_gpu():
    x = torch.empty(256, 1024, 1024, device="cuda")  # 1 GiB of fp32
    figures = cuda_memory_stats()
    assert figures["mem/allocated_gib"] >= 1.0 and figures["mem/max_allocated_gib"] >= 1.0
    del x
