"""fuse_projections: one q/k/v and one gate/up GEMM per layer, same outputs, same checkpoint keys."""

from __future__ import annotations

import pytest
import torch

from model.lm import TransformerLM
from specs.errors import ConfigError
from specs.presets import preset
from tensor.fused import fuse_linears


def _pair(name="llama-debug", **kw):
    torch.manual_seed(0)
    a = TransformerLM(preset(name, **kw)).eval()
    b = TransformerLM(preset(name, **kw)).eval()
    b.load_state_dict(a.state_dict())
    return a, b.fuse_projections()


@pytest.mark.parametrize("name, kw", [("llama-debug", {}), ("gpt2-debug", {}), ("llama-debug", {"bias": True})])
def test_fused_model_matches_and_keeps_its_state_dict_keys(name, kw):
    plain, fused = _pair(name, **kw)
    layer = fused.model.layers[0]
    assert hasattr(layer.self_attn, "qkv_proj") and not hasattr(layer.self_attn, "q_proj")
    if preset(name).mlp == "swiglu":
        assert hasattr(layer.mlp, "gate_up_proj") and not hasattr(layer.mlp, "gate_proj")
    ids = torch.randint(0, plain.config.vocab_size, (2, 9))
    torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-5, atol=1e-5)
    sa, sb = plain.state_dict(), fused.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert fused.num_params() == plain.num_params()


def test_fused_model_loads_unfused_weights_and_decodes_with_every_cache():
    plain, fused = _pair()
    torch.manual_seed(1)
    other = TransformerLM(preset("llama-debug")).eval()
    fused.load_state_dict(other.state_dict())  # keys of an unfused checkpoint are concatenated on load
    ids = torch.randint(0, other.config.vocab_size, (2, 6))
    torch.testing.assert_close(fused(ids), other(ids), rtol=1e-5, atol=1e-5)
    for kind in ("static", "fixed", "paged"):
        c1, c2 = other.new_cache(2, 16, kind=kind), fused.new_cache(2, 16, kind=kind)
        other(ids, cache=c1)
        fused(ids, cache=c2)
        nxt = ids[:, -1:]
        torch.testing.assert_close(fused(nxt, cache=c2), other(nxt, cache=c1), rtol=1e-5, atol=1e-5)


def test_fused_model_trains_and_round_trips_a_checkpoint(tmp_path):
    plain, fused = _pair()
    fused.train()
    ids = torch.randint(0, plain.config.vocab_size, (2, 8))
    fused.loss(ids, ids).backward()
    assert fused.model.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    plain.train()
    plain.loss(ids, ids).backward()  # the fused GEMM's gradient is the plain ones, stacked (training fused works)
    for a, f in zip(plain.model.layers, fused.model.layers):
        want = torch.cat([getattr(a.self_attn, n).weight.grad for n in ("q_proj", "k_proj", "v_proj")])
        torch.testing.assert_close(f.self_attn.qkv_proj.weight.grad, want, rtol=1e-5, atol=1e-6)
        want = torch.cat([a.mlp.gate_proj.weight.grad, a.mlp.up_proj.weight.grad])
        torch.testing.assert_close(f.mlp.gate_up_proj.weight.grad, want, rtol=1e-5, atol=1e-6)
    fused.save_pretrained(tmp_path / "ckpt")
    back = TransformerLM.from_pretrained(tmp_path / "ckpt")
    assert hasattr(back.model.layers[0].self_attn, "q_proj")  # saved under the standard names
    torch.testing.assert_close(back.eval()(ids), fused.eval()(ids), rtol=1e-5, atol=1e-5)


def test_fuse_linears_rejects_mismatched_layers():
    m = torch.nn.Module()
    m.a, m.b = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
    with pytest.raises(ConfigError, match="in_features"):
        fuse_linears(m, ("a", "b"), "ab")
    m.b = torch.nn.Identity()
    with pytest.raises(ConfigError, match="plain nn.Linear"):
        fuse_linears(m, ("a", "b"), "ab")


class _Wrapped(torch.nn.Module):  # stands in for a quantized or adapted projection
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_fusing_leaves_projections_that_are_not_plain_linears():
    plain, _ = _pair()
    ids = torch.randint(0, plain.config.vocab_size, (1, 5))
    want = plain(ids)
    attn, mlp = plain.model.layers[0].self_attn, plain.model.layers[0].mlp
    attn.k_proj, mlp.up_proj = _Wrapped(attn.k_proj), _Wrapped(mlp.up_proj)
    plain.fuse_projections()
    assert isinstance(attn.k_proj, _Wrapped) and not hasattr(attn, "qkv_proj") and not hasattr(mlp, "gate_up_proj")
    assert hasattr(plain.model.layers[1].self_attn, "qkv_proj")  # the other layers still fuse
    torch.testing.assert_close(plain(ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fuse_first", [True, False])
@torch.no_grad()
def test_folded_norms_give_the_same_logits_in_prefill_and_decode(fuse_first):
    """fold_norms: RMSNorm weights in the projections, rstd and the residual add done by them; the same logits as
    the plain model for a forward and for decode steps over a fixed-shape cache (the decode_attention path)."""
    torch.manual_seed(0)
    plain = TransformerLM(preset("llama-debug")).eval()
    with torch.no_grad():
        for layer in plain.model.layers:  # norm weights away from 1, so a missing fold would show
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        plain.model.norm.weight.uniform_(0.5, 1.5)
    folded = TransformerLM(preset("llama-debug")).eval()
    folded.load_state_dict(plain.state_dict())
    if fuse_first:
        folded.fuse_projections()
    folded.fold_norms()
    assert all(layer.norms_folded for layer in folded.model.layers)
    assert folded.model.norm_folded and folded.head_rms_eps == plain.model.norm.eps  # the final norm: lm_head's
    assert not torch.equal(folded.lm_head.weight, plain.lm_head.weight)
    ids = torch.randint(0, plain.config.vocab_size, (2, 7))
    torch.testing.assert_close(folded(ids), plain(ids), rtol=1e-4, atol=1e-4)
    labels = torch.randint(0, plain.config.vocab_size, (2, 7))
    torch.testing.assert_close(folded.loss(ids, labels), plain.loss(ids, labels), rtol=1e-5, atol=1e-5)
    c1, c2 = plain.new_cache(2, 16, kind="fixed"), folded.new_cache(2, 16, kind="fixed")
    plain(ids, cache=c1)
    folded(ids, cache=c2)
    for t in range(3):
        nxt = ids[:, t:t + 1]
        torch.testing.assert_close(folded(nxt, cache=c2), plain(nxt, cache=c1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="save the model before folding"):
        folded.state_dict()


@torch.no_grad()
def test_a_tied_head_keeps_the_final_norm_when_the_layers_fold():
    """Folding the final norm into a head tied to the embedding would change the embedding too: the layers fold,
    the final norm stays where it is, and the logits are the plain model's."""
    cfg = preset("llama-debug", tie_embeddings=True)
    torch.manual_seed(0)
    plain = TransformerLM(cfg).eval()
    plain.model.norm.weight.uniform_(0.5, 1.5)
    folded = TransformerLM(cfg).eval()
    folded.load_state_dict(plain.state_dict())
    embedding = folded.model.embed_tokens.weight.clone()
    folded.fold_norms()
    assert all(layer.norms_folded for layer in folded.model.layers)
    assert not folded.model.norm_folded and folded.head_rms_eps is None
    assert torch.equal(folded.model.embed_tokens.weight, embedding)
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    torch.testing.assert_close(folded(ids), plain(ids), rtol=1e-4, atol=1e-4)


def test_fold_norms_needs_llama_layers():
    gpt = TransformerLM(preset("gpt2-debug"))
    assert not gpt.can_fold_norms()
    with pytest.raises(ConfigError, match="RMSNorm and SwiGLU"):
        gpt.fold_norms()


def test_can_fold_norms_until_a_projection_is_quantized():
    """can_fold_norms: Llama layers with float projections, fused or not, and still True once folded; a projection
    whose weight is no longer float (quantized) makes it False, and fold_norms then refuses."""
    llama = TransformerLM(preset("llama-debug")).eval()
    assert llama.can_fold_norms()
    llama.fuse_projections()
    assert llama.can_fold_norms()
    mlp = llama.model.layers[1].mlp
    mlp.gate_up_proj.weight = torch.nn.Parameter(mlp.gate_up_proj.weight.to(torch.int8), requires_grad=False)
    assert not llama.model.layers[1].can_fold_norms() and llama.model.layers[0].can_fold_norms()
    assert not llama.can_fold_norms()
    with pytest.raises(ConfigError, match="fold before quantizing"):
        llama.fold_norms()
    folded = TransformerLM(preset("llama-debug")).eval().fold_norms()
    assert folded.can_fold_norms()
