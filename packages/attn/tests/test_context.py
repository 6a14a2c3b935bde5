"""build_context: masks, positions and ALiBi agree with brute-force loops for any row lengths, padding and window."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn.context import build_context
from attn.positions import ALiBi, RotaryEmbedding
from specs.errors import ConfigError, ShapeError
from specs.presets import preset
from tensor.alibi import alibi_slopes
from tensor.masks import causal_mask


class FakeCache:
    """Only what build_context reads: per-row lengths."""

    n_layers = 1

    def __init__(self, lens):
        self.lens = lens

    @property
    def seq_lens(self):
        return torch.tensor(self.lens)


def effective_mask(ctx, T: int, S: int) -> torch.Tensor:
    """(B, T, S) bool: what the kernel will apply (its causal flag is bottom-right aligned)."""
    if ctx.mask_B1TS is not None:
        return ctx.mask_B1TS[:, 0]
    B = ctx.positions_BT.shape[0]
    m = causal_mask(T, S) if ctx.causal else torch.ones(T, S, dtype=torch.bool)
    return m.expand(B, T, S)


@st.composite
def scenarios(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 5))
    uniform = draw(st.booleans())
    lens = [draw(st.integers(0, 6))] * B if uniform else [draw(st.integers(0, 6)) for _ in range(B)]
    S = max(lens) + T
    pad = draw(st.booleans())
    attn_mask = [[draw(st.integers(0, 1)) for _ in range(S)] for _ in range(B)] if pad else None
    window = draw(st.one_of(st.none(), st.integers(1, 6)))
    causal = draw(st.booleans())
    pos = draw(st.sampled_from(["rope", "alibi", "none"]))
    return B, T, lens, attn_mask, window, causal, pos


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_mask_positions_and_alibi_match_brute_force(sc):
    B, T, lens, attn_mask, window, causal, pos = sc
    cfg = preset("llama-debug", sliding_window=window, causal=causal, pos_encoding=pos)
    S = max(lens) + T
    am = None if attn_mask is None else torch.tensor(attn_mask)
    ctx = build_context(cfg, torch.zeros(B, T, dtype=torch.long), cache=FakeCache(lens), attn_mask=am,
                        rotary=RotaryEmbedding(cfg), alibi=ALiBi(cfg.n_heads))
    got = effective_mask(ctx, T, S)
    slopes = alibi_slopes(cfg.n_heads)
    for b in range(B):
        real = [1] * S if attn_mask is None else attn_mask[b]
        token_pos = [sum(real[:j + 1]) - 1 if real[j] else 1 for j in range(S)]  # transformers' generate() rule
        for i in range(T):
            q = lens[b] + i
            assert ctx.positions_BT[b, i].item() == token_pos[q]
            for j in range(S):
                want = j < lens[b] + T and bool(real[j])
                if causal:
                    want &= j <= q
                if window is not None:
                    want &= (q - j < window) if causal else abs(q - j) < window
                assert got[b, i, j].item() == want, (b, i, j)
                if pos == "alibi":
                    dist = token_pos[j] - token_pos[q]
                    bias = -abs(dist) if not causal else dist
                    torch.testing.assert_close(ctx.bias_BHTS[b, :, i, j], slopes * bias)
    assert (ctx.cos_BTDh is not None) == (pos == "rope")


def test_plain_training_needs_no_mask():
    cfg = preset("llama-debug")
    ctx = build_context(cfg, torch.zeros(2, 6, dtype=torch.long), rotary=RotaryEmbedding(cfg))
    assert ctx.mask_B1TS is None and ctx.causal
    assert ctx.positions_BT.tolist() == [list(range(6))] * 2
    assert ctx.cos_BTDh.shape == (2, 6, cfg.head_dim)


def test_uniform_decode_needs_no_mask():
    cfg = preset("llama-debug")
    ctx = build_context(cfg, torch.zeros(2, 1, dtype=torch.long), cache=FakeCache([5, 5]),
                        rotary=RotaryEmbedding(cfg))
    assert ctx.mask_B1TS is None and not ctx.causal and ctx.positions_BT.tolist() == [[5], [5]]


def test_documents_are_block_diagonal_and_need_an_empty_cache():
    cfg = preset("llama-debug", pos_encoding="none")
    docs = torch.tensor([[0, 0, 1, 1, 1]])
    ctx = build_context(cfg, torch.zeros(1, 5, dtype=torch.long), document_ids=docs)
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert torch.equal(ctx.mask_B1TS[0, 0], want.bool())
    with pytest.raises(ConfigError, match="empty cache"):
        build_context(cfg, torch.zeros(1, 5, dtype=torch.long), cache=FakeCache([3]), document_ids=docs)


def test_shapes_are_checked():
    cfg = preset("llama-debug", pos_encoding="none")
    with pytest.raises(ShapeError, match=r"attn_mask \(B, S\+T\) = \(1, 7\)"):
        build_context(cfg, torch.zeros(1, 2, dtype=torch.long), cache=FakeCache([5]), attn_mask=torch.ones(1, 2))
    with pytest.raises(ShapeError, match="positions"):
        build_context(cfg, torch.zeros(1, 2, dtype=torch.long), positions=torch.zeros(1, 3, dtype=torch.long))


def test_an_all_ones_attn_mask_keeps_the_fast_path():
    cfg = preset("llama-debug")
    ctx = build_context(cfg, torch.zeros(2, 6, dtype=torch.long), attn_mask=torch.ones(2, 6),
                        rotary=RotaryEmbedding(cfg))
    assert ctx.mask_B1TS is None and ctx.causal


def test_fixed_shape_decode_goes_mask_free_to_decode_attention():
    from attn.cache.fixed import FixedKVCache

    cfg = preset("llama-debug")
    cache = FixedKVCache(n_layers=cfg.n_layers, batch_size=2, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                         max_seq_len=16)
    cache.lens.copy_(torch.tensor([3, 7]))
    ctx = build_context(cfg, torch.zeros(2, 1, dtype=torch.long), cache=cache, rotary=RotaryEmbedding(cfg))
    assert ctx.mask_B1TS is None and ctx.decode is not None and ctx.decode.kwargs == {}
    assert ctx.decode.lens_B.tolist() == [4, 8] and ctx.positions_BT.tolist() == [[3], [7]]
    # RoPE by position: tables covering every slot, whose rows at the new slots are the step's own angles
    cos_PDh, sin_PDh = ctx.decode.cos_PDh, ctx.decode.sin_PDh
    assert cos_PDh.shape[0] >= 16 and cos_PDh.shape[1] == cfg.head_dim
    torch.testing.assert_close(cos_PDh[[3, 7]], ctx.cos_BTDh[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(sin_PDh[[3, 7]], ctx.sin_BTDh[:, 0], rtol=0, atol=0)
    # positions given by the caller need not be the slots: the angles then come per row, as before
    ctx = build_context(cfg, torch.zeros(2, 1, dtype=torch.long), cache=cache, rotary=RotaryEmbedding(cfg),
                        positions=torch.tensor([[0], [1]]))
    assert ctx.decode is not None and ctx.decode.cos_PDh is None and ctx.cos_BTDh is not None


def test_rope_tables_are_the_angles_by_position_except_under_dynamic_ntk():
    from specs.config import RopeScaling

    cfg = preset("llama-debug")
    rotary = RotaryEmbedding(cfg)
    cos, sin = rotary.tables(torch.device("cpu"), torch.bfloat16, 300)
    assert cos.shape == (512, cfg.head_dim) and cos.dtype == torch.bfloat16  # grown in steps of 256
    want_cos, want_sin = rotary(torch.arange(512)[None], torch.bfloat16)
    assert torch.equal(cos, want_cos[0]) and torch.equal(sin, want_sin[0])
    assert rotary.tables(torch.device("cpu"), torch.bfloat16, 100)[0] is cos  # memoised
    ntk = RotaryEmbedding(preset("llama-debug", rope_scaling=RopeScaling(type="dynamic_ntk", factor=2.0,
                                                                              original_max_seq_len=64)))
    assert not ntk.static
    with pytest.raises(ConfigError, match="dynamic NTK"):
        ntk.tables(torch.device("cpu"), torch.float32, 16)


def test_split_counters_reach_decode_attention_when_asked_for(monkeypatch):
    """$LMSTACK_SPLIT_COMBINE=last: the fixed cache keeps one zeroed counter per (row, KV head), and the decode
    context passes them to decode_attention (its splits then combine in one kernel); a bad value is refused."""
    from attn.cache.fixed import FixedKVCache
    from specs.errors import ConfigError

    cfg = preset("llama-debug")
    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "last")
    cache = FixedKVCache(n_layers=cfg.n_layers, batch_size=2, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                         max_seq_len=16)
    ctx = build_context(cfg, torch.zeros(2, 1, dtype=torch.long), cache=cache, rotary=RotaryEmbedding(cfg))
    assert list(ctx.decode.kwargs) == ["split_counters"] and ctx.decode.kwargs["split_counters"] is cache.split_counters
    assert cache.split_counters.dtype == torch.int32 and cache.split_counters.tolist() == [0] * 2 * cfg.kv_heads
    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "first")
    with pytest.raises(ConfigError, match="LMSTACK_SPLIT_COMBINE.*expected 'kernel'.*or 'last'"):
        FixedKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=8, max_seq_len=4)
    # a prefill chunk, a sliding window shorter than the buffer, or an attn_impl outside DECODE_IMPLS: masked path
    for c, t in ((cfg, 2), (preset("llama-debug", sliding_window=4), 1), (preset("llama-debug", attn_impl="sdpa"), 1)):
        ctx = build_context(c, torch.zeros(2, t, dtype=torch.long), cache=cache, rotary=RotaryEmbedding(c))
        assert ctx.decode is None and ctx.mask_B1TS is not None
