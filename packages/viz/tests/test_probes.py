"""Activation probes: figures equal to statistics computed by hand, and no hooks at all when not probing."""

from __future__ import annotations

import pytest
import torch
from conftest import forward_hook_count

from specs.errors import ConfigError
from viz.probes import ActivationProbes
from viz.readers import read_csv
from viz.session import VizSession


def test_no_hooks_without_patterns_or_off_step(tiny_net):
    probes = ActivationProbes(tiny_net, (), every=1)
    assert probes.modules == [] and not probes.arm(0)
    assert forward_hook_count(tiny_net) == 0
    probes = ActivationProbes(tiny_net, ("layers.*.mlp",), every=4)
    for step in (1, 2, 3, 5):
        with probes.step(step) as armed:
            assert not armed and forward_hook_count(tiny_net) == 0
            tiny_net(torch.randn(2, 8))
    with probes.step(4) as armed:
        assert armed and forward_hook_count(tiny_net) == 2
    assert forward_hook_count(tiny_net) == 0  # removed on exit


def test_default_pattern_matches_nested_block_lists(tiny_net):
    outer = torch.nn.Module()
    outer.model = tiny_net  # TransformerLM's layout: model.layers.N.mlp
    flat = [n for n, _ in ActivationProbes(tiny_net).modules]  # the default pattern, at the top level
    assert flat and [n for n, _ in ActivationProbes(outer).modules] == [f"model.{n}" for n in flat]


def test_figures_match_hand_computed_statistics(tiny_net):
    x = torch.randn(16, 8)
    probes = ActivationProbes(tiny_net, ("layers.*.mlp",), every=1)
    with probes.step(0):
        tiny_net(x)
    figures = probes.last
    # Independent computation: run the same modules by hand.
    h0 = tiny_net.layers[0].mlp(x)
    h1 = tiny_net.layers[1].mlp(tiny_net.layers[0](x))
    for name, h in (("layers.0.mlp", h0), ("layers.1.mlp", h1)):
        assert figures[f"probe/{name}/mean"] == pytest.approx(h.mean().item(), rel=1e-5)
        assert figures[f"probe/{name}/std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
        assert figures[f"probe/{name}/absmax"] == pytest.approx(h.abs().max().item(), rel=1e-6)
        zero_frac = (h == 0).sum().item() / h.numel()
        assert figures[f"probe/{name}/zero_frac"] == pytest.approx(zero_frac)
        assert 0.2 < zero_frac < 0.8  # the ReLU output: roughly half zeros, so the figure is not trivially 0


def test_several_calls_in_a_step_average_and_max(tiny_net):
    a, b = torch.randn(4, 8), 10 * torch.randn(4, 8)
    probes = ActivationProbes(tiny_net, ("layers.0.mlp",), every=1)
    probes.arm(0)
    tiny_net(a)
    tiny_net(b)
    f = probes.collect()
    ha, hb = tiny_net.layers[0].mlp(a), tiny_net.layers[0].mlp(b)
    assert f["probe/layers.0.mlp/mean"] == pytest.approx((ha.mean() + hb.mean()).item() / 2, rel=1e-5)
    assert f["probe/layers.0.mlp/absmax"] == pytest.approx(max(ha.abs().max(), hb.abs().max()).item())


def test_grad_only_ignores_no_grad_forwards(tiny_net):
    probes = ActivationProbes(tiny_net, ("layers.*.mlp",), every=1, grad_only=True)
    probes.arm(0)
    with torch.no_grad():
        tiny_net(torch.randn(2, 8))
    assert probes.collect() == {}


def test_pattern_matching_nothing_is_an_error(tiny_net):
    with pytest.raises(ConfigError, match=r"'blocks\.\*\.ffn' matches no module.*layers.0"):
        ActivationProbes(tiny_net, ("blocks.*.ffn",))


def test_session_probes_only_on_probe_steps(tmp_path, tiny_net, viz_cfg):
    cfg = viz_cfg(backend=("csv",), probes=("layers.*.mlp",), log_every=3)
    with VizSession(cfg, tmp_path) as viz:
        viz.watch(tiny_net, next_step=1)
        for step in range(1, 8):
            hooks = forward_hook_count(tiny_net)
            assert hooks == (2 if step % 3 == 0 else 0), step
            loss = tiny_net(torch.randn(2, 8)).square().mean()
            loss.backward()
            viz.on_step(None, step, {"loss": loss})
        assert forward_hook_count(tiny_net) == 0  # step 8 is not a probe step
    rows = read_csv(tmp_path / "scalars.csv")
    assert sorted({s for s, t, *_ in rows if t.startswith("probe/")}) == [3, 6]
    assert sorted({s for s, t, *_ in rows if t == "loss"}) == [3, 6]


def test_session_without_probes_registers_nothing(tmp_path, tiny_net, viz_cfg):
    with VizSession(viz_cfg(backend=("csv",), log_every=1), tmp_path) as viz:
        viz.watch(tiny_net)
        for step in range(3):
            tiny_net(torch.randn(2, 8))
            viz.on_step(None, step, {"loss": 1.0})
            assert viz.probes is None and forward_hook_count(tiny_net) == 0


def test_session_histograms_of_params_and_grads(tmp_path, tiny_net, viz_cfg):
    from viz.readers import read_jsonl

    with VizSession(viz_cfg(backend=("jsonl",), histogram_every=2), tmp_path) as viz:
        viz.watch(tiny_net)
        for step in range(1, 4):
            tiny_net.zero_grad()
            tiny_net(torch.randn(2, 8)).sum().backward()
            viz.on_step(None, step, {})
    hists = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "histogram"]
    n_params = len(list(tiny_net.parameters()))
    assert len(hists) == 2 * n_params and {r["step"] for r in hists} == {2}
    w = next(r for r in hists if r["tag"] == "params/layers.0.mlp.0.weight")
    assert w["n"] == 128 and w["max"] == pytest.approx(tiny_net.layers[0].mlp[0].weight.max().item())
