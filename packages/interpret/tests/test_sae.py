"""Sparse autoencoders: a TopK SAE finds a dictionary planted in synthetic activations (an untrained one does not),
ReLU + L1 trades reconstruction for sparsity, dead features learn through the auxiliary loss, and files round-trip
under SAELens's names."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from interpret import SparseAutoencoder, sae_loss, sae_metrics, train_sae
from specs.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def planted():
    """(activations (8192, 32), the dictionary (48, 32) that made them): three features a row, magnitudes in
    [0.5, 1.5), plus an offset."""
    g = torch.Generator().manual_seed(123)  # not the SAE's seed: its first rows would be this very dictionary
    d, m, n = 32, 48, 8192
    D = torch.randn(m, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, m)
    codes.scatter_(1, torch.rand(n, m, generator=g).argsort(1)[:, :3], torch.rand(n, 3, generator=g) + 0.5)
    return codes @ D + 0.5, D


def _recovered(sae, D, at=0.9):
    cos = D @ sae.W_dec.detach().t()  # unit rows both
    return float((cos.max(1).values > at).float().mean())


def test_topk_sae_recovers_a_planted_dictionary(planted):
    x, D = planted
    assert _recovered(SparseAutoencoder(32, 96, k=3), D) < 0.2  # random directions do not pass
    r = train_sae(x, 96, k=3, steps=1500, lr=2e-3, log_every=500)
    assert _recovered(r.sae, D) == 1.0
    m = sae_metrics(r.sae, x)
    assert m["fvu"] < 0.05 and m["l0"] == 3.0
    assert [h["step"] for h in r.history] == [500, 1000, 1500] and r.history[-1]["fvu"] < r.history[0]["fvu"] + 1
    norms = r.sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    f = r.sae.encode(x[:5])
    assert ((f > 0).sum(-1) <= 3).all() and (f >= 0).all()


def test_relu_l1_trades_reconstruction_for_sparsity(planted):
    x, D = planted
    loose = train_sae(x, 96, k=None, steps=1500, lr=2e-3, l1_coefficient=0.1)
    tight = train_sae(x, 96, k=None, steps=1500, lr=2e-3, l1_coefficient=0.6)
    a, b = sae_metrics(loose.sae, x), sae_metrics(tight.sae, x)
    assert b["l0"] < a["l0"] and b["fvu"] > a["fvu"]
    assert _recovered(loose.sae, D) > 0.9 and _recovered(tight.sae, D) > 0.9
    x_hat, f = tight.sae(x[:4])
    loss, parts = sae_loss(tight.sae, x[:4], l1_coefficient=0.5)
    want = (x_hat - x[:4]).pow(2).sum(-1).mean() + 0.5 * (f * tight.sae.W_dec.norm(dim=1)).sum(-1).mean()
    torch.testing.assert_close(loss, want)


def test_dead_features_learn_through_the_auxiliary_loss(planted):
    x, _ = planted
    sae = SparseAutoencoder(32, 16, k=2, seed=1)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 7]] = True
    for mask, grad_expected in ((None, False), (dead, True)):
        sae.zero_grad()
        loss, parts = sae_loss(sae, x[:64], dead=mask)
        loss.backward()
        live = sae.encode(x[:64]).gt(0).any(0)
        quiet = (~live).nonzero().flatten()
        g = sae.W_enc.grad[:, quiet].abs().sum(0)
        got = {int(q): float(v) for q, v in zip(quiet, g)}
        if grad_expected:
            assert "aux" in parts and all(got[i] > 0 for i in (3, 7) if i in got)
            assert all(v == 0 for i, v in got.items() if i not in (3, 7))
        else:
            assert "aux" not in parts and all(v == 0 for v in got.values())


def test_files_round_trip_under_saelens_names(planted, tmp_path):
    x, _ = planted
    sae = train_sae(x, 64, k=4, steps=50, lr=1e-3).sae
    out = sae.save(tmp_path / "sae", hook_name="resid_post.2", model="m")
    assert set(load_file(str(out / "sae_weights.safetensors"))) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 32 and cfg["d_sae"] == 64 and cfg["k"] == 4
    assert cfg["activation_fn_kwargs"] == {"k": 4}  # where SAELens's TopK reads it
    assert cfg["hook_name"] == "resid_post.2"
    back = SparseAutoencoder.load(out)
    torch.testing.assert_close(back(x[:8])[0], sae(x[:8])[0])
    relu = SparseAutoencoder(32, 8)
    relu.save(out)  # replaces the directory whole
    assert SparseAutoencoder.load(out).k is None and not list(tmp_path.glob(".sae*"))
    cfg = json.loads((out / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 9}))
    with pytest.raises(ConfigError, match="do not match cfg.json"):
        SparseAutoencoder.load(out)
    with pytest.raises(ConfigError, match="needs cfg.json and sae_weights.safetensors"):
        SparseAutoencoder.load(tmp_path / "nothing")


def test_bad_sae_arguments_are_named(planted):
    x, _ = planted
    with pytest.raises(ConfigError, match="k: must be an integer in"):
        SparseAutoencoder(32, 8, k=9)
    with pytest.raises(ConfigError, match="d_sae: must be a positive integer"):
        SparseAutoencoder(32, 0)
    with pytest.raises(ShapeError, match="the SAE reads vectors of 32, got a last dim of 5"):
        SparseAutoencoder(32, 8).encode(torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="batch_size: must be in"):
        train_sae(x[:10], 8, batch_size=64)
    with pytest.raises(ShapeError, match="activations must be"):
        train_sae(x[0], 8)
