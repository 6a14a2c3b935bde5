"""TensorSpec: named dims, dtype and layout for tensors that cross package lines.

Dims are named once, e.g. ``TensorSpec("B", "T", "D")`` for activations, ``("B", "H", "T", "Dh")`` for
queries and ``("B", "KVH", "T", "Dh")`` for keys. ``check(x, D=512)`` works on anything with ``.shape``
(and ``.dtype`` when a dtype is declared), binds names to sizes, and raises a ShapeError naming the dim
that disagrees. It costs a tuple comparison, so public functions can afford it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from specs.errors import ShapeError


@dataclass(frozen=True)
class TensorSpec:
    """A shape contract. Integer dims are fixed sizes; string dims bind on first use and must agree after."""

    dims: tuple[str | int, ...]
    dtypes: tuple[str, ...] = ()  # e.g. ("float32", "bfloat16"); empty means any
    layout: str = "strided"

    def __init__(self, *dims: str | int, dtypes: tuple[str, ...] | str = (), layout: str = "strided"):
        object.__setattr__(self, "dims", tuple(dims))
        object.__setattr__(self, "dtypes", (dtypes,) if isinstance(dtypes, str) else tuple(dtypes))
        object.__setattr__(self, "layout", layout)

    def __str__(self) -> str:
        return "(" + ", ".join(str(d) for d in self.dims) + ")"

    def check(
        self, x: Any, name: str = "tensor", bound: Mapping[str, int] | None = None, **sizes: int
    ) -> dict[str, int]:
        """Check ``x`` and return the dim bindings (``bound`` and ``sizes`` pre-bind names)."""
        shape = tuple(getattr(x, "shape", ()))
        if not hasattr(x, "shape"):
            raise ShapeError(f"{name}: expected a tensor with shape {self}, got {type(x).__name__}")
        if len(shape) != len(self.dims):
            raise ShapeError(f"{name}: expected {len(self.dims)} dims {self}, got {len(shape)} dims {tuple(shape)}")
        env: dict[str, int] = {**(bound or {}), **sizes}
        for i, (dim, size) in enumerate(zip(self.dims, shape)):
            # Sizes are compared as given, never int()-ed: under torch.export they are SymInts and under
            # torch.jit.trace 0-dim tensors, and int() would bake a dynamic axis into the graph as a constant.
            if isinstance(dim, int):
                if size != dim:
                    raise ShapeError(f"{name}: dim {i} must be {dim}, got {size} (shape {tuple(shape)}, spec {self})")
            elif dim in env and env[dim] != size:
                raise ShapeError(
                    f"{name}: dim {i} ({dim}) is {size} but {dim}={env[dim]} elsewhere "
                    f"(shape {tuple(shape)}, spec {self})"
                )
            else:
                env[dim] = size
        if self.dtypes:
            dtype = str(getattr(x, "dtype", "")).replace("torch.", "")
            if dtype not in self.dtypes:
                raise ShapeError(f"{name}: dtype {dtype} not allowed; expected one of {', '.join(self.dtypes)}")
        return env


# The shapes that cross package lines, named once.
TOKENS = TensorSpec("B", "T", dtypes=("int64", "int32"))
HIDDEN = TensorSpec("B", "T", "D")
LOGITS = TensorSpec("B", "T", "V")
QUERY = TensorSpec("B", "H", "T", "Dh")
KEY_VALUE = TensorSpec("B", "KVH", "S", "Dh")
