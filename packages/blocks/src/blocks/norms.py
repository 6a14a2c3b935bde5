"""Normalisation layers over the model width, computed by the kernel registry's ``rmsnorm`` / ``layernorm`` ops.

RMSNorm: Zhang & Sennrich 2019 (arXiv:1910.07467), normalised in fp32 as Hugging Face's LlamaRMSNorm.
LayerNorm: Ba et al. 2016 (arXiv:1607.06450). Parameters are ``weight`` (and ``bias``) as in torch and transformers.

Shape legend: (..., D) in, (..., D) out.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel import resolve
from specs.config import ModelConfig


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = resolve("rmsnorm", "auto", device=x.device, dtype=x.dtype,
                     backward=torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        return op(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    """``(x - mean) / std * weight + bias`` over the last dim (``bias=False`` drops the shift)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = resolve("layernorm", "auto", device=x.device, dtype=x.dtype,
                     backward=torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        return op(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


def make_norm(cfg: ModelConfig) -> RMSNorm | LayerNorm:
    """The norm ``cfg.norm`` names, over ``cfg.d_model`` with ``cfg.norm_eps`` (LayerNorm bias follows ``cfg.bias``)."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return LayerNorm(cfg.d_model, cfg.norm_eps, bias=cfg.bias)
