"""Rotary position embeddings (RoPE) and their context-extension scalings.

RoPE: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv:2104.09864).
Scalings, computed exactly as Hugging Face transformers' ``ROPE_INIT_FUNCTIONS`` (modeling_rope_utils.py):
  - linear: position interpolation, Chen et al. 2023 (arXiv:2306.15595): ``inv_freq / factor``.
  - dynamic_ntk: NTK-aware base rescaling as the sequence grows past the original context (bloc97/emozilla 2023).
  - llama3: the wavelength-banded scaling of Llama 3.1 (Meta, 2024).
The layout is Hugging Face's "rotate_half": ``cos``/``sin`` are ``cat(freqs, freqs)`` over the last dim, and
``apply_rope`` equals transformers' ``apply_rotary_pos_emb``, so Llama checkpoints load without permuting q/k.

Shape legend: B batch, H heads, T sequence, Dh head dim.
"""

from __future__ import annotations

import math

import torch

from specs.config import RopeScaling
from specs.errors import ConfigError
from specs.tensor_spec import TensorSpec

_POSITIONS = TensorSpec("B", "T", dtypes=("int64", "int32"))
_X = TensorSpec("B", "H", "T", "Dh")
_COS = TensorSpec("B", "T", "Dh")


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # int64 arange then float, exactly as transformers, so the fp32 values are bit-identical.
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    return 1.0 / (theta**exponent)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    old_context_len = s.original_max_seq_len
    assert old_context_len is not None  # RopeScaling.check() requires it for llama3
    low_freq_wavelen = old_context_len / s.low_freq_factor
    high_freq_wavelen = old_context_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are interpolated by `factor`, short ones kept, the band between blended.
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / s.factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None,
                  seq_len: int | None = None) -> torch.Tensor:
    """Inverse frequencies ``(Dh/2,)`` float32 for RoPE over ``head_dim`` with base ``theta``.

    ``seq_len`` only matters for ``dynamic_ntk``: the base grows once ``seq_len`` exceeds
    ``scaling.original_max_seq_len`` (transformers' ``max_position_embeddings``); None means no growth.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ConfigError("head_dim", f"RoPE needs a positive even head_dim, got {head_dim}")
    if theta <= 0:
        raise ConfigError("rope_theta", f"must be > 0, got {theta}")
    if scaling is None:
        return _default_inv_freq(head_dim, theta)
    if scaling.type == "linear":
        return _default_inv_freq(head_dim, theta) / scaling.factor
    if scaling.type == "llama3":
        return _llama3_inv_freq(_default_inv_freq(head_dim, theta), scaling)
    if scaling.type == "dynamic_ntk":
        original = scaling.original_max_seq_len
        assert original is not None  # RopeScaling.check() requires it for dynamic_ntk
        seq_len = original if seq_len is None else max(seq_len, original)
        base = theta * ((scaling.factor * seq_len / original) - (scaling.factor - 1)) ** (head_dim / (head_dim - 2))
        return _default_inv_freq(head_dim, base)
    raise ConfigError("rope_scaling.type", f"unknown RoPE scaling {scaling.type!r}; valid: linear, dynamic_ntk, llama3")


def rope_cos_sin(positions_BT: torch.Tensor, inv_freq: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape (B, T, Dh) for integer ``positions_BT`` (B, T), cast to ``dtype``.

    Angles are computed in float32 with autocast off (as transformers does) so bf16 runs keep exact positions.
    """
    _POSITIONS.check(positions_BT, "positions_BT")
    device_type = positions_BT.device.type if positions_BT.device.type != "mps" else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        inv_freq_F = inv_freq.to(positions_BT.device, torch.float32)
        inv_freq_B1F = inv_freq_F[None, :, None].expand(positions_BT.shape[0], -1, 1)
        pos_B1T = positions_BT[:, None, :].float()
        freqs_BTF = (inv_freq_B1F @ pos_B1T).transpose(1, 2)  # (B, T, Dh/2)
        emb_BTDh = torch.cat((freqs_BTF, freqs_BTF), dim=-1)
        return emb_BTDh.cos().to(dtype), emb_BTDh.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` over the last dim: the 90-degree rotation of each (x1_i, x2_i) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x_BHTDh: torch.Tensor, cos_BTDh: torch.Tensor, sin_BTDh: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (B, H, T, Dh) by the angles of ``cos``/``sin`` (B, T, Dh); returns (B, H, T, Dh)."""
    env = _X.check(x_BHTDh, "x_BHTDh")
    _COS.check(cos_BTDh, "cos_BTDh", T=env["T"], Dh=env["Dh"])
    _COS.check(sin_BTDh, "sin_BTDh", T=env["T"], Dh=env["Dh"])
    cos, sin = cos_BTDh.unsqueeze(1), sin_BTDh.unsqueeze(1)  # broadcast over heads
    return (x_BHTDh * cos) + (rotate_half(x_BHTDh) * sin)

