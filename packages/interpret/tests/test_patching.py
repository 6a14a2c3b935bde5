"""Activation patching and causal tracing: the same effects as a patch written here against the transformers model
with its own hooks, and the properties any correct patch has."""

from __future__ import annotations

import pytest
import torch

from interpret import activation_patching, causal_trace, logit_diff, target_prob
from specs.errors import ConfigError, ShapeError


def _hf_patch(hf, clean, corrupt, metric, point, layer, pos):
    """The corrupted run of the transformers model with ``point`` of ``layer`` at ``pos`` taken from the clean run,
    by forward hooks on its own modules (no interpret code)."""
    block = hf.model.layers[layer]
    module = {"resid_post": block, "mlp_out": block.mlp, "attn_out": block.self_attn}[point]
    seen = {}

    def grab(mod, args, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    def put(mod, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, pos] = seen["h"][:, pos]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with torch.no_grad():
        handle = module.register_forward_hook(grab)
        hf(clean)
        handle.remove()
        handle = module.register_forward_hook(put)
        value = metric(hf(corrupt).logits)
        handle.remove()
    return float(value[0])


@pytest.mark.parametrize("point", ["resid_post", "mlp_out", "attn_out"])
def test_activation_patching_matches_a_patch_written_against_transformers(llama, point):
    hf, ours, _ = llama
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(3, 300, (1, 7), generator=g)
    corrupt = clean.clone()
    corrupt[0, 1:3] = torch.randint(3, 300, (2,), generator=g)
    metric = logit_diff(11, 12)
    r = activation_patching(ours, clean, corrupt, metric, point=point)
    assert r.effects.shape == (3, 7) and r.layers == (0, 1, 2) and r.positions == tuple(range(7))
    with torch.no_grad():
        assert r.clean == pytest.approx(float(metric(hf(clean).logits)[0]), abs=1e-4)
        assert r.corrupt == pytest.approx(float(metric(hf(corrupt).logits)[0]), abs=1e-4)
    for layer in range(3):
        for pos in range(7):
            want = _hf_patch(hf, clean, corrupt, metric, point, layer, pos)
            assert float(r.effects[layer, pos]) == pytest.approx(want, abs=2e-4), (layer, pos)
    assert r.clean != r.corrupt


def test_patching_properties(llama):
    """Restoring the last layer's output at the last position restores the clean answer; at any other position it
    changes nothing; before the corruption (position 0, layer 0) nothing differs either."""
    _, ours, _ = llama
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(3, 300, (1, 6), generator=g)
    corrupt = clean.clone()
    corrupt[0, 2] = (clean[0, 2] + 1) % 300
    r = activation_patching(ours, clean, corrupt, target_prob(5))
    assert float(r.effects[2, 5]) == pytest.approx(r.clean, rel=1e-5)
    assert torch.allclose(r.effects[2, :5], torch.tensor(r.corrupt), rtol=1e-5)
    assert torch.allclose(r.effects[:, :2], torch.tensor(r.corrupt), rtol=1e-5)  # positions before the change
    pre = activation_patching(ours, clean, corrupt, target_prob(5), point="resid_pre", layers=[0])
    assert float(pre.effects[0, 2]) == pytest.approx(r.clean, rel=1e-5)  # the changed token's input: all restored
    assert torch.allclose(pre.effects[0, [0, 1, 3, 4, 5]], torch.tensor(r.corrupt), rtol=1e-5)
    n = r.normalized()
    assert float(n[2, 5]) == pytest.approx(1.0, abs=1e-4) and float(n[2, 0]) == pytest.approx(0.0, abs=1e-4)
    sub = activation_patching(ours, clean, corrupt, target_prob(5), layers=[1], positions=[-1, 2], window=3)
    assert sub.effects.shape == (1, 2) and sub.positions == (5, 2)
    assert float(sub.effects[0, 0]) == pytest.approx(r.clean, rel=1e-5)  # window 3 at layer 1 restores layer 2


def test_causal_trace(llama):
    hf, ours, _ = llama
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = int(ours(ids)[0, -1].argmax())
    r = causal_trace(ours, ids, subject=[1, 2], target=target, samples=4, seed=1)
    assert r.effects.shape == (3, 6)
    with torch.no_grad():
        assert r.clean == pytest.approx(float(torch.softmax(ours(ids)[0, -1], -1)[target]), rel=1e-5)
    assert r.corrupt < r.clean  # noise on the subject costs the answer probability
    assert float(r.effects[2, 5]) == pytest.approx(r.clean, rel=1e-4)
    assert torch.allclose(r.effects[2, :5], torch.tensor(r.corrupt), rtol=1e-4)
    one = causal_trace(ours, ids, subject=[2], target=target, samples=4, seed=1, point="resid_pre", layers=[0])
    assert float(one.effects[0, 2]) == pytest.approx(r.clean, rel=1e-4)  # the only noised input, restored
    again = causal_trace(hf, ids, subject=[1, 2], target=target, samples=4, seed=1)  # transformers' own model
    torch.testing.assert_close(again.effects, r.effects, rtol=1e-3, atol=1e-5)
    assert again.corrupt == pytest.approx(r.corrupt, rel=1e-3)
    other = causal_trace(ours, ids, subject=[1, 2], target=target, samples=4, seed=2)
    assert other.corrupt != r.corrupt
    mlp = causal_trace(ours, ids, subject=[1, 2], target=target, samples=2, point="mlp_out", window=3)
    assert mlp.effects.shape == (3, 6)


def test_bad_patching_input_is_named(llama):
    _, ours, _ = llama
    ids = torch.randint(3, 300, (1, 5))
    with pytest.raises(ShapeError, match="clean and corrupt prompts must both be"):
        activation_patching(ours, ids, ids[:, :4], target_prob(1))
    with pytest.raises(ConfigError, match="patching runs over the layers"):
        activation_patching(ours, ids, ids, target_prob(1), point="embed")
    with pytest.raises(ConfigError, match="window: must be at least 1"):
        activation_patching(ours, ids, ids, target_prob(1), window=0)
    with pytest.raises(ConfigError, match="subject: names no positions"):
        causal_trace(ours, ids, subject=[], target=1)
    with pytest.raises(ConfigError, match="samples: must be at least 1"):
        causal_trace(ours, ids, subject=[0], target=1, samples=0)
