"""RMSNorm folded into the matmul that reads it, and a residual add folded into the one that writes it (decode).

A pre-norm block reads ``y = linear(rmsnorm(x) * w)``. The norm's weight ``w`` scales the input columns of every
projection that reads it, so it can be multiplied into their weights once (``W' = W diag(w)``, TensorRT-LLM and
others fold LayerNorm weights the same way), and what is left is a per-row scalar: ``y = rstd(x) * (x @ W'.T)``,
``rstd = 1 / sqrt(mean(x^2) + eps)``. A matmul that reads x anyway can compute ``rstd`` from it and apply it in its
epilogue (lmstack's skinny kernel sums the squares outside its weight loop), and can add the residual stream there
too, so a decode step needs no separate norm or add kernels. :func:`linear_with` asks a layer to do that when it can
(``accepts_prologue``: the kernel registry's routed Linears do) and does the same arithmetic around any other layer.
Folding changes the weights: a folded model is for inference, and :func:`refuse_state_dict` makes saving it an error
instead of a silently wrong checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from specs.errors import ConfigError


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dim, computed in fp32, returned in x's dtype (no weight)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def linear_with(layer: nn.Module, x: torch.Tensor | None, *, rms_eps: float | None = None,
                residual: torch.Tensor | None = None, att: Any = None) -> torch.Tensor:
    """``layer(rms_normalize(x, rms_eps)) + residual`` (each part only when given). Layers with
    ``accepts_prologue = True`` get both as keywords and fuse them; others run them around the layer.

    ``att`` (instead of x, which is then None): an attention output not yet materialised, a unified decode
    attention's accumulators (``kernel.reference.UnifiedParts``: ``att.x`` the (B, W) row, ``att.output()`` the
    (B, H x Dh) output). Layers with ``accepts_att = True`` get ``layer(att.x, residual=..., att=att)`` and read
    the output as they load it; others get ``att.output()``. The result is (B, N)."""
    if att is not None:
        if x is not None or rms_eps is not None:
            raise ConfigError("linear_with", "att replaces x (pass x=None) and takes no rms_eps")
        if residual is not None:  # (B, 1, N) from a decode step: the result's (B, N)
            residual = residual.reshape(att.x.shape[0], -1)
        if getattr(layer, "accepts_att", False):
            return layer(att.x, residual=residual, att=att)
        x = att.output()
    if x is None:
        raise ConfigError("linear_with", "x is None without att: nothing to project")
    if rms_eps is None and residual is None:
        return layer(x)
    if getattr(layer, "accepts_prologue", False):
        return layer(x, rms_eps=rms_eps, residual=residual)
    y = layer(rms_normalize(x, rms_eps) if rms_eps is not None else x)
    return y if residual is None else y + residual


@torch.no_grad()
def fold_norm_weight(layers: Iterable[nn.Module], norm_weight: torch.Tensor) -> None:
    """Scale the input columns of each (float) Linear in ``layers`` by ``norm_weight`` in place."""
    for layer in layers:
        w = getattr(layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.shape[-1] != norm_weight.shape[0]:
            raise ConfigError("fold_norms", f"{type(layer).__name__} is not a float Linear reading a "
                                            f"{norm_weight.shape[0]}-wide norm (fold before quantizing)")
        w.mul_(norm_weight.to(w.dtype)[None, :])


def refuse_state_dict(module: nn.Module, why: str) -> None:
    """Make ``module.state_dict()`` (and its parents') raise ConfigError saying ``why``."""

    def hook(mod: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        raise ConfigError("state_dict", why)

    module._register_state_dict_hook(hook)
