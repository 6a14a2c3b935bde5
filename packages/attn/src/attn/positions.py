"""Position encodings that enter attention: RoPE angles and ALiBi slopes, one holder per model.

RoPE (Su et al. 2021, arXiv:2104.09864) and its scalings come from :mod:`tensor.rope`; ALiBi (Press et al. 2021,
arXiv:2108.12409) from :mod:`tensor.alibi`. Neither holds parameters. The fp32 inverse frequencies are kept out of
the module's buffers on purpose: ``model.to(torch.bfloat16)`` would otherwise round them, and bf16 frequencies
shift every angle (Hugging Face keeps them fp32 for the same reason). They are memoised per device instead.

Shape legend: B batch, T positions, Dh head dim, H heads.
"""

from __future__ import annotations

import torch

from specs.config import ModelConfig
from specs.errors import ConfigError
from tensor.alibi import alibi_slopes
from tensor.rope import rope_cos_sin, rope_inv_freq


class RotaryEmbedding(torch.nn.Module):
    """``cos, sin = rotary(positions_BT, dtype)`` -> (B, T, Dh) each, for ``cfg``'s head_dim, theta and scaling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        self.scaling = cfg.rope_scaling
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # fp32 per device, not a buffer (see module doc)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def static(self) -> bool:
        """False under dynamic NTK scaling, whose angles depend on the longest position of each call."""
        return self.scaling is None or self.scaling.type != "dynamic_ntk"

    def inv_freq(self, device: torch.device, max_position: int | None = None) -> torch.Tensor:
        """(Dh/2,) fp32. Dynamic NTK grows the base with ``max_position`` + 1, so it is recomputed per call."""
        if self.scaling is not None and self.scaling.type == "dynamic_ntk":
            seq_len = None if max_position is None else max_position + 1
            return rope_inv_freq(self.head_dim, self.theta, self.scaling, seq_len=seq_len).to(device)
        if device not in self._inv_freq:
            inv = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device)
            _static(inv)
            self._inv_freq[device] = inv
        return self._inv_freq[device]

    def tables(self, device: torch.device, dtype: torch.dtype, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` (P, Dh) of positions 0 .. P-1 with P >= ``positions`` (memoised per device and dtype, grown
        on demand): row p equals ``forward``'s angles at position p. For a kernel that looks up each token's row
        itself (``decode_attention(cos_PDh=...)``): no angle kernels per decode step. Not for dynamic NTK scaling
        (``static`` is False), whose angles change with the sequence length."""
        if not self.static:
            raise ConfigError("rope_scaling", "dynamic NTK angles depend on each call's longest position; there "
                                              "is no fixed table of them")
        key = (torch.device(device), dtype)
        have = self._tables.get(key)
        if have is None or have[0].shape[0] < positions:
            P = max(256, -(-positions // 256) * 256)
            with torch.no_grad():
                cos, sin = rope_cos_sin(torch.arange(P, device=device)[None], self.inv_freq(key[0]), dtype)
            have = (_static(cos[0].contiguous()), _static(sin[0].contiguous()))
            self._tables[key] = have
        return have

    def forward(self, positions_BT: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dynamic = self.scaling is not None and self.scaling.type == "dynamic_ntk"
        max_position = int(positions_BT.max()) if dynamic and positions_BT.numel() else None
        return rope_cos_sin(positions_BT, self.inv_freq(positions_BT.device, max_position), dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, scaling={self.scaling}"


def _static(t: torch.Tensor) -> torch.Tensor:
    """Mark a memoised tensor as living at a fixed address, so a graph-captured step (cudagraph trees) reads it in
    place instead of copying it in at every replay; made while tracing (no eager call came first), it stays
    unmarked, since dynamo cannot trace the marking."""
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)
    return t


class ALiBi(torch.nn.Module):
    """Per-head ALiBi slopes (H,), fp32, memoised per device like the RoPE frequencies."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self._slopes: dict[torch.device, torch.Tensor] = {}

    def slopes(self, device: torch.device) -> torch.Tensor:
        if device not in self._slopes:
            self._slopes[device] = alibi_slopes(self.n_heads).to(device)
        return self._slopes[device]

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}"
