"""Reading and rewriting the residual stream at named points, with hooks that exist only inside a ``with`` block.

A point is one of :data:`POINTS` at a layer: ``resid_pre`` (the hidden states entering layer ``i``),
``resid_post`` (leaving it), ``attn_out`` / ``mlp_out`` (what its attention or MLP sublayer adds), or ``embed``
(the token embedding's output, layer 0 only). :func:`intervene` runs a function on the hidden states (B, T, D) at
each point asked for; what it returns (None: unchanged) replaces them in the forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from interpret.anatomy import Anatomy, first_tensor
from specs.errors import ConfigError

POINTS = ("embed", "resid_pre", "resid_post", "attn_out", "mlp_out")
Point = tuple[str, int]
Edit = Callable[[torch.Tensor], "torch.Tensor | None"]


def check_point(parts: Anatomy, point: Point) -> None:
    name, layer = point
    if name not in POINTS:
        raise ConfigError("point", f"unknown point {name!r}; expected one of {POINTS}")
    limit = 1 if name == "embed" else parts.n_layers
    if not isinstance(layer, int) or not 0 <= layer < limit:
        raise ConfigError("layer", f"{name} has layers 0..{limit - 1}, got {layer!r}")


def _module(parts: Anatomy, point: Point) -> nn.Module:
    name, layer = point
    if name == "embed":
        return parts.embed
    if name in ("resid_pre", "resid_post"):
        return parts.layers[layer]
    return parts.sublayer(layer, "attn" if name == "attn_out" else "mlp")


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


@contextlib.contextmanager
def intervene(parts: Anatomy, edits: Mapping[Point, Edit]) -> Iterator[None]:
    """Within the block, each ``edits[(point, layer)](hidden)`` sees the hidden states there on every forward and
    may return replacements (same shape). The hooks are removed on exit, also after an exception."""
    handles = []
    try:
        for point, fn in edits.items():
            check_point(parts, point)
            module = _module(parts, point)
            if point[0] == "resid_pre":
                def pre(mod: nn.Module, args: tuple, kwargs: dict, fn: Edit = fn) -> Any:
                    if args:
                        new = fn(args[0])
                        return None if new is None else ((new, *args[1:]), kwargs)
                    new = fn(kwargs["hidden_states"])
                    return None if new is None else (args, {**kwargs, "hidden_states": new})

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod: nn.Module, args: tuple, output: Any, fn: Edit = fn) -> Any:
                    new = fn(first_tensor(output))
                    return None if new is None else _replace_first(output, new)

                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()
