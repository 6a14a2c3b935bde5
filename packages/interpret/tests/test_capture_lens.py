"""Capture, edits and the logit lens: the hidden states are transformers' ``output_hidden_states`` on the same
weights, for lmstack's TransformerLM and for the transformers model itself."""

from __future__ import annotations

import pytest
import torch

from interpret import Anatomy, anatomy, capture, intervene, kl_to_final, lens_report, logit_lens
from specs.errors import ConfigError


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_captured_residual_stream_is_transformers_hidden_states(request, which, ids):
    hf, ours, _ = request.getfixturevalue(which)
    with torch.no_grad():
        want = hf(ids, output_hidden_states=True)
    states = want.hidden_states  # embeddings, then each layer's output, the last after the final norm
    L = len(states) - 1
    for model in (ours, hf):
        cache = capture(model, ids, points=("resid_pre", "resid_post"))
        parts = anatomy(model)
        assert parts.n_layers == L and sorted(cache) == sorted([(p, i) for p in ("resid_pre", "resid_post")
                                                                 for i in range(L)])
        torch.testing.assert_close(cache["resid_pre", 0], states[0], rtol=1e-5, atol=1e-5)
        for i in range(L - 1):
            torch.testing.assert_close(cache["resid_post", i], states[i + 1], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(cache["resid_pre", i + 1], cache["resid_post", i])
        torch.testing.assert_close(parts.norm(cache["resid_post", L - 1]), states[L], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cache.logits, want.logits, rtol=1e-4, atol=1e-4)
        assert cache.stack("resid_post").shape == (L, *ids.shape, states[0].shape[-1])


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_the_lens_reads_each_layer_through_the_final_norm_and_head(request, which, ids):
    hf, ours, _ = request.getfixturevalue(which)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        norm = hf.model.norm if which == "llama" else hf.transformer.ln_f
        want = torch.stack([hf.lm_head(norm(h)) for h in out.hidden_states[1:-1]] + [out.logits])
    lens = logit_lens(ours, ids)
    assert lens.shape == (3, *ids.shape, 300) and lens.dtype == torch.float32
    torch.testing.assert_close(lens, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logit_lens(hf, ids, layers=[1], positions=[-1]), want[1:2, :, -1:], rtol=1e-4,
                               atol=1e-4)
    kl = kl_to_final(lens)
    assert kl.shape == (3, *ids.shape) and (kl[:-1] > 0).all() and kl[-1].abs().max() < 1e-5


def test_sublayer_outputs_add_up_to_the_layers_update(llama, ids):
    """In a pre-norm layer resid_post = resid_pre + attn_out + mlp_out: the points are where they say."""
    _, ours, _ = llama
    cache = capture(ours, ids, points=("resid_pre", "resid_post", "attn_out", "mlp_out", "embed"))
    for i in range(3):
        torch.testing.assert_close(cache["resid_post", i],
                                   cache["resid_pre", i] + cache["attn_out", i] + cache["mlp_out", i],
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache["embed", 0], cache["resid_pre", 0])


def test_intervene_edits_the_forward_and_leaves_no_hooks(llama, ids):
    _, ours, _ = llama
    parts = anatomy(ours)
    with torch.no_grad():
        base = ours(ids)
        with intervene(parts, {("mlp_out", 2): torch.zeros_like}):
            ablated = ours(ids)
        again = ours(ids)
    assert not torch.allclose(base, ablated)
    torch.testing.assert_close(again, base, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ours.modules())
    # the ablation is the layer without its MLP: the lens of resid_pre + attn_out at the last layer
    cache = capture(ours, ids, points=("resid_pre", "attn_out"), layers=[2])
    torch.testing.assert_close(ablated, parts.logits(cache["resid_pre", 2] + cache["attn_out", 2]), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(RuntimeError, match="boom"), intervene(parts, {("resid_post", 0): lambda h: None}):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in ours.modules())


def test_lens_report(llama):
    from data.tokenizer.loading import load_tokenizer

    _, ours, d = llama
    tok = load_tokenizer(str(d))
    doc = lens_report(ours, tok, "The Eiffel Tower is in the city of", k=4, target=" Paris")
    assert doc["position"] == len(doc["tokens"]) - 1 and len(doc["layers"]) == 3
    ids = torch.tensor([tok.encode("The Eiffel Tower is in the city of")])
    probs = logit_lens(ours, ids, positions=[-1])[:, 0, 0].softmax(-1)
    paris = tok.encode(" Paris")[0]
    for layer, row in enumerate(doc["layers"]):
        assert len(row["top"]) == 4 and [p for _, p in row["top"]] == sorted([p for _, p in row["top"]],
                                                                            reverse=True)
        assert row["top"][0][1] == pytest.approx(float(probs[layer].max()), rel=1e-5)
        assert row["target_prob"] == pytest.approx(float(probs[layer, paris]), rel=1e-5)
        assert row["target_rank"] == int((probs[layer] > probs[layer, paris]).sum())
    assert doc["layers"][-1]["kl_to_final"] == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_named(llama, ids):
    _, ours, _ = llama
    with pytest.raises(ConfigError, match="unknown point 'resid_mid'"):
        capture(ours, ids, points=("resid_mid",))
    with pytest.raises(ConfigError, match="resid_post has layers 0..2, got 7"):
        capture(ours, ids, layers=[7])
    with pytest.raises(ConfigError, match="has none of the known layouts"):
        anatomy(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="the lens reads the residual stream"):
        logit_lens(ours, ids, point="mlp_out")
    parts = anatomy(ours)
    custom = Anatomy(parts.layers, parts.norm, parts.unembed, parts.embed)  # any model, its parts given
    torch.testing.assert_close(logit_lens(ours, ids, parts=custom), logit_lens(ours, ids))
