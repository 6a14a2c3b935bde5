"""Capture a model's activations in one forward pass (TransformerLens' ``run_with_cache``).

    from interpret import capture
    cache = capture(model, ids, points=("resid_post", "mlp_out"))   # every layer's, or layers=[3, 7]
    cache["resid_post", 3]                                         # (B, T, D), detached, on the model's device
    cache.logits                                                   # the forward's logits
    cache.stack("resid_post")                                      # (L, B, T, D)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from interpret.anatomy import Anatomy, anatomy, first_tensor
from interpret.hooks import POINTS, Point, intervene
from specs.errors import ConfigError


class ActivationCache(dict):
    """``{(point, layer): (B, T, D) tensor}`` with the forward's ``logits``; :meth:`stack` gives one point's layers
    as one tensor."""

    logits: Any = None

    def stack(self, point: str) -> torch.Tensor:
        """(L, B, T, D): ``point`` at every layer captured, in layer order."""
        layers = sorted(layer for name, layer in self if name == point)
        if not layers:
            raise ConfigError("point", f"{point!r} was not captured; captured: {sorted({n for n, _ in self})}")
        return torch.stack([self[point, layer] for layer in layers])


def points_for(parts: Anatomy, points: Iterable[str], layers: Sequence[int] | None) -> list[Point]:
    """The (point, layer) pairs of ``points`` at ``layers`` (None: all; ``embed`` has layer 0 alone)."""
    out = []
    for name in points:
        if name not in POINTS:
            raise ConfigError("points", f"unknown point {name!r}; expected some of {POINTS}")
        if name == "embed":
            out.append((name, 0))
            continue
        for layer in range(parts.n_layers) if layers is None else layers:
            out.append((name, int(layer)))
    return out


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor, *, points: Iterable[str] = ("resid_post",),
            layers: Sequence[int] | None = None, parts: Anatomy | None = None, **forward: Any) -> ActivationCache:
    """Run ``model(input_ids, **forward)`` once and keep the hidden states at ``points`` of ``layers`` (see
    :mod:`interpret.hooks`); ``logits`` is the forward's output (``.logits`` of a Hugging Face output)."""
    parts = parts or anatomy(model)
    cache = ActivationCache()

    def keep(point: Point) -> Any:
        def fn(h: torch.Tensor) -> None:
            cache[point] = h.detach()

        return fn

    with intervene(parts, {p: keep(p) for p in points_for(parts, points, layers)}):
        out = model(input_ids, **forward)
    cache.logits = first_tensor(getattr(out, "logits", out))
    return cache
