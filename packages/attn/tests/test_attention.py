"""The Attention module against a naive loop-free implementation written here, for MHA, GQA and MQA."""

from __future__ import annotations

import math

import pytest
import torch

from attn.attention import Attention
from attn.cache import PagedKVCache, StaticKVCache
from attn.context import build_context
from attn.positions import RotaryEmbedding
from specs.errors import ShapeError
from specs.presets import preset
from tensor.rope import apply_rope


def naive(att: Attention, x_BTD: torch.Tensor, rotary: RotaryEmbedding, valid_BT: torch.Tensor) -> torch.Tensor:
    """Per-head softmax attention with explicit head sharing; valid_BT marks real (non-padding) tokens."""
    B, T, _ = x_BTD.shape
    H, KVH, Dh = att.n_heads, att.n_kv_heads, att.head_dim
    pos_BT = (valid_BT.long().cumsum(1) - 1).clamp_min(0)
    cos, sin = rotary(pos_BT, x_BTD.dtype)
    q = apply_rope((x_BTD @ att.q_proj.weight.T).view(B, T, H, Dh).transpose(1, 2), cos, sin)
    k = apply_rope((x_BTD @ att.k_proj.weight.T).view(B, T, KVH, Dh).transpose(1, 2), cos, sin)
    v = (x_BTD @ att.v_proj.weight.T).view(B, T, KVH, Dh).transpose(1, 2)
    out = torch.zeros(B, H, T, Dh)
    for h in range(H):
        g = h // (H // KVH)  # the KV head this query head shares
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(Dh)  # (B, T, T)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & valid_BT[:, None, :]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        out[:, h] = probs @ v[:, g]
    return out.transpose(1, 2).reshape(B, T, H * Dh) @ att.o_proj.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@torch.no_grad()
def test_attention_matches_naive(n_kv_heads, impl):
    torch.manual_seed(0)
    cfg = preset("llama-debug", n_kv_heads=n_kv_heads, attn_impl=impl)
    att, rotary = Attention(cfg), RotaryEmbedding(cfg)
    x = torch.randn(2, 7, cfg.d_model)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ctx = build_context(cfg, torch.zeros(2, 7, dtype=torch.long), attn_mask=mask, rotary=rotary)
    got = att(x, ctx)
    want = naive(att, x, rotary, mask.bool())
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1, 3:], want[1, 3:], atol=1e-5, rtol=0)  # padding queries: don't care
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("cache_kind", ["static", "paged"])
@torch.no_grad()
def test_cached_attention_equals_uncached(cache_kind):
    torch.manual_seed(1)
    cfg = preset("llama-debug", n_kv_heads=1)
    att, rotary = Attention(cfg), RotaryEmbedding(cfg)
    dims = dict(n_layers=1, n_kv_heads=1, head_dim=cfg.head_dim)
    cache = (StaticKVCache(batch_size=2, max_seq_len=16, **dims) if cache_kind == "static"
             else PagedKVCache(num_blocks=8, block_size=3, batch_size=2, **dims))
    x = torch.randn(2, 9, cfg.d_model)
    ids = torch.zeros(2, 9, dtype=torch.long)
    full = att(x, build_context(cfg, ids, rotary=rotary))
    steps = []
    for a, b in ((0, 5), (5, 6), (6, 9)):
        steps.append(att(x[:, a:b], build_context(cfg, ids[:, a:b], cache=cache, rotary=rotary)))
        cache.advance(b - a)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_kind", ["fixed", "paged_view"])
@pytest.mark.parametrize("kernel_writes", [True, False])
@torch.no_grad()
def test_decode_steps_over_fixed_shape_caches_equal_uncached(cache_kind, kernel_writes, monkeypatch):
    """Decode steps through decode_attention (the kernel tests check the Triton kernel's new-token arguments against
    the reference used here): with ``kernel_writes`` the op ropes q/k and writes the new token itself; without,
    rope + ``append`` + attention. Both equal the uncached forward, and the cache holds the rotated keys."""
    from attn.cache.decode_view import PagedDecodeView
    from attn.cache.fixed import FixedKVCache

    torch.manual_seed(2)
    cfg = preset("llama-debug", n_kv_heads=2)
    att, rotary = Attention(cfg), RotaryEmbedding(cfg)
    monkeypatch.setattr(FixedKVCache, "kernel_writes", kernel_writes)
    monkeypatch.setattr(PagedDecodeView, "kernel_writes", kernel_writes)
    B, T0, T = 2, 4, 7
    x = torch.randn(B, T, cfg.d_model)
    ids = torch.zeros(B, T, dtype=torch.long)
    full = att(x, build_context(cfg, ids, rotary=rotary))
    dims = dict(n_layers=1, n_kv_heads=2, head_dim=cfg.head_dim)
    if cache_kind == "fixed":
        cache = FixedKVCache(batch_size=B, max_seq_len=12, **dims)
        att(x[:, :T0], build_context(cfg, ids[:, :T0], cache=cache, rotary=rotary))  # prefill (masked path)
        cache.advance(T0)
        step_cache = cache
    else:
        cache = PagedKVCache(num_blocks=10, block_size=3, batch_size=B, **dims)  # sequences 0 and 1, active
        att(x[:, :T0], build_context(cfg, ids[:, :T0], cache=cache, rotary=rotary))
        cache.advance(T0)
        step_cache = cache.decode_view(B, 12, cfg)
    steps = []
    for t in range(T0, T):
        if cache_kind == "paged_view":
            for s in (0, 1):
                cache.reserve(s, 1)
            step_cache.load([0, 1])
        ctx = build_context(cfg, ids[:, t:t + 1], cache=step_cache, rotary=rotary)
        assert ctx.decode is not None
        steps.append(att(x[:, t:t + 1], ctx))
        step_cache.advance(1)
        if cache_kind == "paged_view":
            step_cache.commit()
    torch.testing.assert_close(torch.cat(steps, 1), full[:, T0:], atol=1e-5, rtol=0)
    if cache_kind == "fixed":  # every slot written, with rotated keys, as a cache-less rope of the keys gives
        k_all = (x @ att.k_proj.weight.T).view(B, T, 2, cfg.head_dim).transpose(1, 2)
        cos, sin = rotary(torch.arange(T).expand(B, T), x.dtype)
        torch.testing.assert_close(cache.k_cache[0][:, :, :T], apply_rope(k_all, cos, sin), atol=1e-5, rtol=0)
        assert cache.lens.tolist() == [T, T]


def test_input_width_is_checked():
    cfg = preset("llama-debug")
    att = Attention(cfg)
    ctx = build_context(cfg, torch.zeros(1, 2, dtype=torch.long), rotary=RotaryEmbedding(cfg))
    with pytest.raises(ShapeError, match="D"):
        att(torch.zeros(1, 2, cfg.d_model + 1), ctx)


def test_parameter_names_follow_llama():
    names = [n for n, _ in Attention(preset("llama-debug")).named_parameters()]
    assert names == ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"]
    gpt_names = [n for n, _ in Attention(preset("gpt2-debug")).named_parameters()]
    assert "q_proj.bias" in gpt_names


def test_triton_decode_through_a_fixed_cache_combines_its_splits_in_the_kernel(monkeypatch):
    """$LMSTACK_SPLIT_COMBINE=last: the cache keeps split_counters and they reach the Triton decode kernel (Triton's
    interpreter on CPU): with a 150-token prefill its slots split over programs, the last of which combines them.
    The steps equal the reference op's, and the counters come back zeroed after every step."""
    triton_impl = pytest.importorskip("kernel.triton.decode_attention")
    from attn.cache.fixed import FixedKVCache
    from kernel import reference
    from kernel.triton._device import device_info

    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "last")
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # a real GPU where there is one
    torch.manual_seed(3)
    cfg = preset("llama-debug", n_kv_heads=2)
    att, rotary = Attention(cfg).to(dev), RotaryEmbedding(cfg).to(dev)
    B, T0, T = 1, 150, 153
    x = torch.randn(B, T, cfg.d_model, device=dev)
    ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    outs = {}
    for name, op in (("reference", reference.decode_attention), ("triton", triton_impl.decode_attention)):
        calls = []

        def spy(q, k, v, lens, op=op, calls=calls, **kw):
            calls.append(kw.get("split_counters"))
            return op(q, k, v, lens, **kw)

        monkeypatch.setattr(Attention, "_decode_op", lambda self, q, spy=spy: spy)
        cache = FixedKVCache(n_layers=1, batch_size=B, n_kv_heads=2, head_dim=cfg.head_dim, max_seq_len=256,
                             device=dev)
        att(x[:, :T0], build_context(cfg, ids[:, :T0], cache=cache, rotary=rotary))
        cache.advance(T0)
        steps = []
        for t in range(T0, T):
            steps.append(att(x[:, t:t + 1], build_context(cfg, ids[:, t:t + 1], cache=cache, rotary=rotary)))
            cache.advance(1)
            assert not cache.split_counters.any()
        assert all(c is cache.split_counters for c in calls) and len(calls) == T - T0
        outs[name] = torch.cat(steps, 1)
    assert triton_impl.num_splits(B, 2, 256, device_info(x)[0]) > 1  # so the combine ran
    torch.testing.assert_close(outs["triton"], outs["reference"], atol=1e-5, rtol=1e-5)


class _ReadsAtt(torch.nn.Linear):
    """An output projection that reads a unified decode attention's accumulators (as serve's routed Linears do)."""

    accepts_att = True
    calls = 0

    def forward(self, x, residual=None, att=None):
        if att is None:
            return super().forward(x) if residual is None else super().forward(x) + residual
        type(self).calls += 1
        y = super().forward(att.output())
        return y if residual is None else y + residual


@torch.no_grad()
def test_unified_decode_steps_leave_the_output_to_a_projection_that_reads_the_accumulators():
    """A fixed cache with the unified workspace (use_unified): two layers' decode steps, in order, attend through
    the registry's decode_attention_unified and hand their o projections the accumulators (att): the uncached
    forward's outputs; the workspace holds the last layer's row, reset zeroes it, use_unified(None) drops it."""
    import copy

    from attn.cache.fixed import FixedKVCache

    torch.manual_seed(3)
    cfg = preset("llama-debug", n_kv_heads=2)
    rotary = RotaryEmbedding(cfg)
    first = Attention(cfg, layer_idx=0)
    first.o_proj.__class__ = _ReadsAtt
    second = copy.deepcopy(first)
    second.layer_idx = 1
    B, T0, T = 1, 3, 6
    x = torch.randn(B, T, cfg.d_model)
    ids = torch.zeros(B, T, dtype=torch.long)
    full = [a(x, build_context(cfg, ids, rotary=rotary)) for a in (first, second)]
    cache = FixedKVCache(batch_size=B, max_seq_len=10, n_layers=2, n_kv_heads=2, head_dim=cfg.head_dim)
    cache.use_unified(cfg.n_heads)
    ws = cache.unified_ws
    H, Dh = cfg.n_heads, cfg.head_dim
    assert ws.shape == (2, B, -(-(H * Dh + H + 1) // 16) * 16) and not ws.any()
    ctx = build_context(cfg, ids[:, :T0], cache=cache, rotary=rotary)
    for a in (first, second):
        a(x[:, :T0], ctx)
    cache.advance(T0)
    _ReadsAtt.calls = 0
    steps = [[], []]
    for t in range(T0, T):
        ctx = build_context(cfg, ids[:, t:t + 1], cache=cache, rotary=rotary)
        assert ctx.decode is not None and ctx.decode.unified_ws is ws
        for i, a in enumerate((first, second)):
            steps[i].append(a(x[:, t:t + 1], ctx))
        cache.advance(1)
    assert _ReadsAtt.calls == 2 * (T - T0)
    for i in range(2):
        torch.testing.assert_close(torch.cat(steps[i], 1), full[i][:, T0:], atol=1e-5, rtol=0)
    assert torch.all(ws[1, :, H * Dh:H * Dh + H] == 1) and not ws[0].any()  # layer 1's row; it zeroed layer 0's
    cache.reset()
    assert not ws.any() and cache.lens.tolist() == [0]
    cache.use_unified(None)
    assert cache.unified_ws is None
