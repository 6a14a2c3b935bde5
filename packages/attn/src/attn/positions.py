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

    def inv_freq(self, device: torch.device, max_position: int | None = None) -> torch.Tensor:
        """(Dh/2,) fp32. Dynamic NTK grows the base with ``max_position`` + 1, so it is recomputed per call."""
        if self.scaling is not None and self.scaling.type == "dynamic_ntk":
            seq_len = None if max_position is None else max_position + 1
            return rope_inv_freq(self.head_dim, self.theta, self.scaling, seq_len=seq_len).to(device)
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device)
        return self._inv_freq[device]

    def forward(self, positions_BT: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dynamic = self.scaling is not None and self.scaling.type == "dynamic_ntk"
        max_position = int(positions_BT.max()) if dynamic and positions_BT.numel() else None
        return rope_cos_sin(positions_BT, self.inv_freq(positions_BT.device, max_position), dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, scaling={self.scaling}"


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
