"""Residual-stream helpers: pre-norm and post-norm wiring and scaled residual adds.

- Pre-norm (GPT-2, Llama): ``x + f(norm(x))``; post-norm (Vaswani et al. 2017, BERT): ``norm(x + f(x))``.
  Xiong et al. 2020 (arXiv:2002.04745) explain why pre-norm trains without warmup tricks.
- DeepNorm (Wang et al. 2022, "DeepNet", arXiv:2203.00555) scales the residual branch of post-norm layers:
  ``norm(alpha * x + f(x))`` with alpha = (2N)^(1/4) for an N-layer decoder-only model, and initialises the
  projections with gain beta = (8N)^(-1/4).

Shapes pass through: x and the sublayer output share (B, T, D).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from specs.errors import ConfigError

Sublayer = Callable[[torch.Tensor], torch.Tensor]


def residual_add(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * x + y``: the residual stream ``x`` plus a branch output ``y`` (alpha=1 is the plain residual)."""
    return x + y if alpha == 1.0 else torch.add(y, x, alpha=alpha)


def pre_norm_residual(x: torch.Tensor, norm: Sublayer, fn: Sublayer) -> torch.Tensor:
    """``x + fn(norm(x))`` (GPT-2, Llama)."""
    return x + fn(norm(x))


def post_norm_residual(x: torch.Tensor, norm: Sublayer, fn: Sublayer, *, alpha: float = 1.0) -> torch.Tensor:
    """``norm(alpha * x + fn(x))`` (original Transformer, BERT; DeepNorm with alpha = deepnorm_alpha(n))."""
    return norm(residual_add(x, fn(x), alpha=alpha))


def residual(x: torch.Tensor, norm: Sublayer, fn: Sublayer, position: Literal["pre", "post"]) -> torch.Tensor:
    """Wire ``fn`` around the residual stream with the ``ModelConfig.norm_position`` policy ('pre' or 'post')."""
    if position == "pre":
        return pre_norm_residual(x, norm, fn)
    if position == "post":
        return post_norm_residual(x, norm, fn)
    raise ConfigError("norm_position", f"expected 'pre' or 'post', got {position!r}")


def deepnorm_alpha(n_layers: int) -> float:
    """DeepNorm residual scale for a decoder-only stack of ``n_layers``: (2N)^(1/4)."""
    if n_layers <= 0:
        raise ConfigError("n_layers", f"must be > 0, got {n_layers}")
    return (2 * n_layers) ** 0.25


def deepnorm_beta(n_layers: int) -> float:
    """DeepNorm init gain for a decoder-only stack of ``n_layers``: (8N)^(-1/4)."""
    if n_layers <= 0:
        raise ConfigError("n_layers", f"must be > 0, got {n_layers}")
    return (8 * n_layers) ** -0.25
