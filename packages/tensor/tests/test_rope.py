"""RoPE: bit-parity with transformers' rope init functions and Llama rotary embedding, plus rotation invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from specs.config import RopeScaling
from specs.errors import ConfigError, ShapeError
from tensor.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate_half


def hf_config(head_dim: int, theta: float, max_pos: int, rope: dict | None = None) -> LlamaConfig:
    params = {"rope_type": "default", "rope_theta": theta, **(rope or {})}
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=max_pos,
                       rope_parameters=params)


@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_default_matches_transformers(head_dim, theta):
    hf = LlamaRotaryEmbedding(hf_config(head_dim, theta, 2048))
    assert torch.equal(rope_inv_freq(head_dim, theta), hf.inv_freq)


@pytest.mark.parametrize("factor", [1.0, 2.0, 8.0])
def test_linear_matches_transformers(factor):
    cfg = hf_config(64, 10000.0, 2048, {"rope_type": "linear", "factor": factor})
    expected, attn_factor = ROPE_INIT_FUNCTIONS["linear"](cfg, "cpu")
    assert attn_factor == 1.0
    got = rope_inv_freq(64, 10000.0, RopeScaling(type="linear", factor=factor))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("seq_len", [None, 100, 2048, 3000, 16384])
@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_dynamic_ntk_matches_transformers(seq_len, factor):
    # transformers scales against config.max_position_embeddings; lmstack names it original_max_seq_len.
    cfg = hf_config(64, 10000.0, 2048, {"rope_type": "dynamic", "factor": factor})
    expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, "cpu", seq_len=seq_len)
    got = rope_inv_freq(64, 10000.0, RopeScaling(type="dynamic_ntk", factor=factor, original_max_seq_len=2048),
                        seq_len=seq_len)
    assert torch.equal(got, expected)
    if seq_len is not None and seq_len > 2048:  # the base grew: low frequencies got slower
        assert got[-1] < rope_inv_freq(64, 10000.0)[-1]


@pytest.mark.parametrize(("factor", "low", "high", "orig", "head_dim", "theta"), [
    (8.0, 1.0, 4.0, 8192, 128, 500000.0),  # Llama 3.1
    (32.0, 1.0, 4.0, 8192, 64, 500000.0),  # Llama 3.2 1B/3B
    (4.0, 2.0, 8.0, 256, 16, 10000.0),  # a small context so all three bands are populated
])
def test_llama3_matches_transformers(factor, low, high, orig, head_dim, theta):
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": orig}
    cfg = hf_config(head_dim, theta, 4 * orig, rope)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    scaling = RopeScaling(type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                          original_max_seq_len=orig)
    got = rope_inv_freq(head_dim, theta, scaling)
    assert torch.equal(got, expected)
    assert not torch.equal(got, rope_inv_freq(head_dim, theta))  # the scaling actually changed something


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cos_sin_and_apply_match_llama_rotary_embedding(dtype):
    B, H, T, Dh = 2, 3, 11, 16
    hf = LlamaRotaryEmbedding(hf_config(Dh, 10000.0, 2048))
    pos = torch.stack([torch.arange(T), torch.arange(5, 5 + T)])
    x = torch.randn(B, H, T, Dh).to(dtype)
    cos_hf, sin_hf = hf(x, pos)
    cos, sin = rope_cos_sin(pos, rope_inv_freq(Dh, 10000.0), dtype)
    assert cos.shape == (B, T, Dh) and cos.dtype == dtype
    assert torch.equal(cos, cos_hf) and torch.equal(sin, sin_hf)
    k = torch.randn(B, 1, T, Dh).to(dtype)
    q_hf, k_hf = apply_rotary_pos_emb(x, k, cos_hf, sin_hf)
    assert torch.equal(apply_rope(x, cos, sin), q_hf)
    assert torch.equal(apply_rope(k, cos, sin), k_hf)


def _rotate(x: torch.Tensor, pos: int, inv_freq: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_cos_sin(torch.tensor([[pos]]), inv_freq, torch.float64)
    return apply_rope(x.view(1, 1, 1, -1), cos, sin).view(-1)


half_dims = st.integers(1, 16)


@settings(max_examples=60, deadline=None)
@given(half=half_dims, pos=st.integers(0, 100_000), theta=st.floats(10.0, 1e6), seed=st.integers(0, 2**31))
def test_rope_preserves_norm(half, pos, theta, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * half, generator=g, dtype=torch.float64)
    y = _rotate(x, pos, rope_inv_freq(2 * half, theta).double())
    assert math.isclose(y.norm().item(), x.norm().item(), rel_tol=1e-6)


@settings(max_examples=60, deadline=None)
@given(half=half_dims, m=st.integers(0, 4096), n=st.integers(0, 4096), shift=st.integers(-4096, 4096),
       seed=st.integers(0, 2**31))
def test_rope_relative_position_invariance(half, m, n, shift, seed):
    # <R(m) q, R(n) k> depends only on m - n: shifting both positions leaves the score unchanged.
    if min(m, n) + shift < 0:
        shift = -min(m, n)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2 * half, generator=g, dtype=torch.float64)
    inv = rope_inv_freq(2 * half, 10000.0)
    a = torch.dot(_rotate(q, m, inv), _rotate(k, n, inv))
    b = torch.dot(_rotate(q, m + shift, inv), _rotate(k, n + shift, inv))
    # cos/sin are computed in fp32 like transformers, so angles at position ~8k carry ~1e-3 absolute error
    assert math.isclose(a.item(), b.item(), rel_tol=1e-3, abs_tol=1e-2 * q.norm().item() * k.norm().item())


def test_rope_at_position_zero_is_identity_and_rotate_half_is_a_quarter_turn():
    x = torch.randn(1, 2, 3, 8)
    cos, sin = rope_cos_sin(torch.zeros(1, 3, dtype=torch.long), rope_inv_freq(8, 10000.0))
    assert torch.equal(apply_rope(x, cos, sin), x)
    assert torch.equal(rotate_half(rotate_half(x)), -x)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="even head_dim"):
        rope_inv_freq(7, 10000.0)
    with pytest.raises(ShapeError, match="positions_BT"):
        rope_cos_sin(torch.arange(4), rope_inv_freq(8, 10000.0))
    cos, sin = rope_cos_sin(torch.arange(4)[None], rope_inv_freq(8, 10000.0))
    with pytest.raises(ShapeError, match=r"cos_BTDh.*Dh"):
        apply_rope(torch.randn(1, 2, 4, 16), cos, sin)
