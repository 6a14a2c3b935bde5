"""What a kernel request asks for, and what an implementation declares it can serve.

A :class:`Request` is the small hashable key that selection is a pure function of (device type, dtype, head dim,
causal / window / GQA / mask / bias / backward needs, compute capability). An :class:`Implementation` declares the
devices, dtypes, head dims, features and minimum compute capability it supports, and ``why_not(request)`` says in
words why it cannot serve a request (None when it can). The callable itself is imported lazily from a
``"module:attr"`` target, so optional back ends (triton, flash-attn) are imported only when chosen.
This follows the vLLM attention-backend registry and Hugging Face's attention interface.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from specs.errors import PluginError

OPS: tuple[str, ...] = ("attention", "rmsnorm", "layernorm", "rope", "swiglu", "cross_entropy", "linear_cross_entropy",
                        "int8_linear", "decode_attention", "linear", "decode_layer", "gelu_mlp",
                        "decode_attention_unified", "lora", "nf4_dequantize")


@dataclass(frozen=True, kw_only=True)
class Request:
    """What a caller needs from one op call. Fields other than ``op`` default to "don't care"."""

    op: str
    device: str = "cpu"  # device type: 'cpu', 'cuda', 'mps', ...
    dtype: torch.dtype | None = None
    head_dim: int | None = None
    causal: bool = False
    window: int | None = None
    gqa: bool = False
    mask: bool = False  # an arbitrary boolean mask is passed
    bias: bool = False  # an additive float bias (e.g. ALiBi) is passed
    backward: bool = False  # gradients will flow through the call
    capability: tuple[int, int] | None = None  # CUDA compute capability of the device, when known

    def describe(self) -> str:
        parts = [f"device={self.device}"]
        if self.dtype is not None:
            parts.append(f"dtype={str(self.dtype).removeprefix('torch.')}")
        if self.head_dim is not None:
            parts.append(f"head_dim={self.head_dim}")
        parts += [name for name in ("causal", "gqa", "mask", "bias", "backward") if getattr(self, name)]
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.capability is not None:
            parts.append(f"sm{self.capability[0]}{self.capability[1]}")
        return ", ".join(parts)


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


@dataclass(frozen=True, kw_only=True)
class Implementation:
    """One implementation of one op, with what it supports. ``None`` for a constraint means "any"."""

    op: str
    name: str
    target: str | Callable[..., Any]  # "package.module:function", imported on first use, or the callable itself
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    head_dims: tuple[int, ...] | None = None  # exact head dims allowed
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    causal: bool = True
    window: bool = True
    gqa: bool = True
    mask: bool = True
    bias: bool = True
    backward: bool = True
    min_capability: tuple[int, int] | None = None
    requires: tuple[str, ...] = ()  # importable top-level modules, e.g. ("triton",)
    priority: int = 0  # 'auto' tries higher first
    fallback: str | None = "reference"  # what a named request falls back to when this one refuses
    description: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise PluginError(f"implementation {self.name!r} is for unknown op {self.op!r}; "
                              f"valid ops: {', '.join(OPS)}")

    def why_not(self, request: Request) -> str | None:
        """Why this implementation cannot serve ``request``, or None if it can."""
        if request.op != self.op:
            return f"implements {self.op!r}, not {request.op!r}"
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the {module!r} package, which is not installed (pip install {module.replace('_', '-')})"
        if self.devices is not None and request.device not in self.devices:
            return f"runs on {'/'.join(self.devices)} only, not {request.device}"
        if self.dtypes is not None and request.dtype is not None and request.dtype not in self.dtypes:
            allowed = ", ".join(_dtype_name(d) for d in self.dtypes)
            return f"supports dtypes {allowed}, not {_dtype_name(request.dtype)}"
        if request.head_dim is not None:
            hd = request.head_dim
            if self.head_dims is not None and hd not in self.head_dims:
                return f"supports head_dim in {self.head_dims}, not {hd}"
            if self.max_head_dim is not None and hd > self.max_head_dim:
                return f"supports head_dim <= {self.max_head_dim}, not {hd}"
            if hd % self.head_dim_multiple:
                return f"needs head_dim divisible by {self.head_dim_multiple}, not {hd}"
        for feature, word in (("causal", "causal masking"), ("gqa", "grouped-query attention"),
                              ("mask", "arbitrary boolean masks"), ("bias", "additive attention bias"),
                              ("backward", "a backward pass")):
            if getattr(request, feature) and not getattr(self, feature):
                return f"does not support {word}"
        if request.window is not None and not self.window:
            return "does not support sliding-window attention"
        if (self.min_capability is not None and request.device == "cuda" and request.capability is not None
                and request.capability < self.min_capability):
            need, have = self.min_capability, request.capability
            return f"needs compute capability >= {need[0]}.{need[1]}, the device has {have[0]}.{have[1]}"
        return None

    def load(self) -> Callable[..., Any]:
        """The callable (imported on first use)."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{self.op} implementation {self.name!r} ({self.target}) failed to load: {exc}") from exc
