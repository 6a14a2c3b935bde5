"""KernelRegistry: symbolic op names -> implementations, with cached selection, logged choices and fallbacks.

``registry.resolve("attention", "auto", device="cuda", dtype=torch.bfloat16, head_dim=128, causal=True)`` returns
the highest-priority implementation that can serve the request and logs (once per request key) which one it chose.
A named implementation that cannot serve the request falls back along its ``fallback`` chain (flash -> sdpa ->
reference), logging the reason once. Unknown op or implementation names raise ``PluginError`` listing the valid
ones. Third-party kernels arrive through the ``lmstack.kernels`` entry-point group; each entry point loads to an
:class:`Implementation`, a list of them, or a zero-argument callable returning either.

There is no module-level mutable registry: ``default_registry()`` is a lazily built, resettable factory (reset it with
``default_registry.cache_clear()``), and tests build their own ``KernelRegistry``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import torch

from kernel.implementation import OPS, Implementation, Request
from specs.errors import ConfigError, PluginError, suggest

log = logging.getLogger("kernel")

ENTRY_POINT_GROUP = "lmstack.kernels"
AUTO = "auto"


@functools.lru_cache(maxsize=64)
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _device_key(device: str | torch.device | None,
                capability: tuple[int, int] | None) -> tuple[str, tuple[int, int] | None]:
    """(device type, compute capability) without building a torch.device on the hot path."""
    if device is None:
        return "cpu", capability
    if isinstance(device, torch.device):
        dev_type, index = device.type, device.index
    else:
        dev_type, _, idx = device.partition(":")
        index = int(idx) if idx else None
    if capability is None and dev_type == "cuda" and torch.cuda.is_available():
        capability = _cuda_capability(torch.cuda.current_device() if index is None else index)
    return dev_type, capability


def make_request(op: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 head_dim: int | None = None, causal: bool = False, window: int | None = None, gqa: bool = False,
                 mask: bool = False, bias: bool = False, backward: bool = False,
                 capability: tuple[int, int] | None = None) -> Request:
    """Normalise call-site arguments into the hashable :class:`Request` key (device -> device type, capability)."""
    dev_type, capability = _device_key(device, capability)
    return Request(op=op, device=dev_type, dtype=dtype, head_dim=head_dim, causal=causal, window=window, gqa=gqa,
                   mask=mask, bias=bias, backward=backward, capability=capability)


# Under torch.compile, 'auto' prefers implementations the compiler can see through: inductor fuses the pure-torch
# norms, RoPE and SwiGLU into the surrounding kernels, and a cuBLAS matmul + fused cross-entropy beats the opaque
# chunked kernels (measured on an H200, GPT-2 124M training step, 2026-11-28). Eager 'auto' keeps the priorities.
# A tuple is an order of preference, the first that can serve the request wins: on CUDA the loss keeps the logits
# but turns them into their gradient in one Triton pass (triton_inplace: +3% tokens/s on that step, session 5), and
# GPT-2's MLP runs its GELU in cuBLASLt's matmul epilogues (an opaque op, but one fewer pass each way than the GELU
# kernels inductor fuses: +2.2% on that step at 16 rows, +1.9% at 32, session 11).
COMPILE_PREFERENCE: dict[str, str | tuple[str, ...]] = {
    "rmsnorm": "reference", "layernorm": "reference", "rope": "reference", "swiglu": "reference",
    "cross_entropy": "reference", "linear_cross_entropy": ("triton_inplace", "logits"),
    "gelu_mlp": ("cublaslt", "reference")}


class KernelRegistry:
    """Maps (op, implementation name) to :class:`Implementation`; selection is cached per request key."""

    def __init__(self, implementations: Iterable[Implementation] = ()):
        self._impls: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}
        self._loaded_entry_points: set[str] = set()
        self._select = functools.lru_cache(maxsize=4096)(self._select_uncached)
        # resolve()'s cache is a plain dict, not lru_cache, so torch.compile (dynamo) can trace the lookup
        self._resolved: dict[tuple[Any, ...], Callable[..., Any]] = {}
        for impl in implementations:
            self.register(impl)

    # registration -------------------------------------------------------------------------------------------
    def register(self, impl: Implementation, *, replace: bool = False) -> None:
        """Add ``impl``; a second implementation under the same (op, name) needs ``replace=True``."""
        if impl.name == AUTO:
            raise PluginError(f"{AUTO!r} is reserved for automatic selection; pick another implementation name")
        existing = self._impls[impl.op].get(impl.name)
        if existing is not None and existing != impl and not replace:
            raise PluginError(f"{impl.op} implementation {impl.name!r} is already registered; pass replace=True")
        self._impls[impl.op][impl.name] = impl
        self.cache_clear()

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP,
                          eps: Iterable[EntryPoint] | None = None) -> list[str]:
        """Register the implementations of every entry point in ``group`` once; returns names newly loaded.

        Loading is idempotent: an entry point already loaded into this registry is skipped.
        """
        found = list(entry_points(group=group)) if eps is None else list(eps)
        loaded = []
        for ep in found:
            key = f"{ep.name}={ep.value}"
            if key in self._loaded_entry_points:
                continue
            try:
                obj: Any = ep.load()
                if callable(obj) and not isinstance(obj, Implementation):
                    obj = obj()
                impls = [obj] if isinstance(obj, Implementation) else list(obj)
                if not all(isinstance(i, Implementation) for i in impls):
                    raise TypeError("must give an Implementation or a list of them")
            except Exception as exc:  # a broken third-party plugin: say which one
                raise PluginError(f"{group} entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            for impl in impls:
                self.register(impl, replace=True)
            self._loaded_entry_points.add(key)
            loaded.append(ep.name)
        return loaded

    # lookup -------------------------------------------------------------------------------------------------
    def ops(self) -> list[str]:
        return list(OPS)

    def names(self, op: str) -> list[str]:
        """Implementation names registered for ``op`` (sorted), not counting 'auto'."""
        return sorted(self._op(op))

    def _op(self, op: str) -> dict[str, Implementation]:
        if op not in self._impls:
            raise PluginError(f"unknown kernel op {op!r}{suggest(op, OPS)}; valid ops: {', '.join(OPS)}")
        return self._impls[op]

    def get(self, op: str, name: str) -> Implementation:
        """The implementation registered as ``name`` for ``op`` (no capability check)."""
        impls = self._op(op)
        if name not in impls:
            valid = [AUTO, *sorted(impls)]
            raise PluginError(f"unknown {op} implementation {name!r}{suggest(name, valid)}; "
                              f"valid names: {', '.join(valid)}")
        return impls[name]

    def select(self, op: str, impl: str = AUTO, **request: Any) -> Implementation:
        """The implementation that will serve ``op`` for this request (see :func:`make_request` for fields)."""
        return self._select(impl, make_request(op, **request))

    def resolve(self, op: str, impl: str = AUTO, *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, head_dim: int | None = None, causal: bool = False,
                window: int | None = None, gqa: bool = False, mask: bool = False, bias: bool = False,
                backward: bool = False, capability: tuple[int, int] | None = None) -> Callable[..., Any]:
        """The callable chosen for ``op`` under preference ``impl`` ('auto' or a registered name).

        Called on every forward by model code, so the whole lookup is one dict hit keyed by the arguments, which
        torch.compile traces as a constant (``fullgraph=True`` works once the key has been resolved eagerly; a
        first resolution inside a compiled region is a graph break).
        """
        dev_type, capability = _device_key(device, capability)
        compiling = torch.compiler.is_compiling()
        key = (op, impl, dev_type, dtype, head_dim, causal, window, gqa, mask, bias, backward, capability, compiling)
        fn = self._resolved.get(key)
        return fn if fn is not None else self._resolve_miss(key)

    @torch.compiler.disable
    def _resolve_miss(self, key: tuple[Any, ...]) -> Callable[..., Any]:
        # Resolve the eager and the compiled variant together, so a compiled region that follows an eager call
        # finds its choice in the dict (no graph break).
        for compiling in (False, True):
            twin = (*key[:-1], compiling)
            if twin not in self._resolved:
                self._resolved[twin] = self._pick(twin).load()
        return self._resolved[key]

    def _pick(self, key: tuple[Any, ...]) -> Implementation:
        op, impl, dev_type, dtype, head_dim, causal, window, gqa, mask, bias, backward, capability, compiling = key
        if not isinstance(op, str) or not isinstance(impl, str):  # checked on a miss only: resolve is per forward
            raise ConfigError("kernel", f"an op and an implementation are named by strings ('auto' picks one); got "
                                        f"op={op!r}, impl={impl!r}")
        for field, value in (("head_dim", head_dim), ("window", window)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"kernel.{field}", f"expected None or an integer >= 1, got {value!r}")
        request = Request(op=op, device=dev_type, dtype=dtype, head_dim=head_dim, causal=causal, window=window,
                          gqa=gqa, mask=mask, bias=bias, backward=backward, capability=capability)
        preferred = COMPILE_PREFERENCE.get(op) if compiling and impl == AUTO else None
        for name in (preferred,) if isinstance(preferred, str) else preferred or ():
            if name in self._op(op) and self.get(op, name).why_not(request) is None:
                log.info("kernel %s: auto chose %r under torch.compile (%s)", op, name, request.describe())
                return self.get(op, name)
        return self._select(impl, request)

    def why_not(self, op: str, impl: str, **request: Any) -> str | None:
        """Why ``impl`` cannot serve this request (None when it can)."""
        return self.get(op, impl).why_not(make_request(op, **request))

    def cache_clear(self) -> None:
        self._select.cache_clear()
        self._resolved.clear()

    def _select_uncached(self, impl: str, request: Request) -> Implementation:
        impls = self._op(request.op)
        if impl == AUTO:
            reasons = []
            for cand in sorted(impls.values(), key=lambda i: (-i.priority, i.name)):
                reason = cand.why_not(request)
                if reason is None:
                    log.info("kernel %s: auto chose %r for (%s)", request.op, cand.name, request.describe())
                    return cand
                reasons.append(f"{cand.name}: {reason}")
            raise PluginError(f"no {request.op} implementation can serve ({request.describe()}): {'; '.join(reasons)}")
        chosen = self.get(request.op, impl)
        tried: list[str] = []
        visited = {chosen.name}
        while (reason := chosen.why_not(request)) is not None:
            tried.append(f"{chosen.name!r} cannot serve: {reason}")
            nxt = chosen.fallback
            if nxt is None or nxt in visited or nxt not in impls:
                raise PluginError(f"no {request.op} implementation can serve ({request.describe()}): "
                                  f"{'; '.join(tried)}")
            visited.add(nxt)
            chosen = impls[nxt]
        if tried:
            log.warning("kernel %s: %s; using %r for (%s)", request.op, "; ".join(tried), chosen.name,
                        request.describe())
        return chosen

class _DefaultRegistry:
    """A lazily built, resettable registry: ``default_registry()``, ``default_registry.cache_clear()``.

    Not ``functools.lru_cache``: dynamo (torch.compile) traces through an lru_cache'd function and would build a
    fresh registry inside the compiled graph; plain attribute access it traces as a constant.
    """

    def __init__(self) -> None:
        self._registry: KernelRegistry | None = None

    def __call__(self) -> KernelRegistry:
        """The registry with lmstack's built-in implementations plus installed ``lmstack.kernels`` entry points."""
        if self._registry is None:
            from kernel.builtin import builtin_implementations

            registry = KernelRegistry(builtin_implementations())
            registry.load_entry_points()
            self._registry = registry
        return self._registry

    def cache_clear(self) -> None:
        """Forget the registry; the next call rebuilds it (tests)."""
        self._registry = None


default_registry = _DefaultRegistry()


def resolve(op: str, impl: str = AUTO, **request: Any) -> Callable[..., Any]:
    """``default_registry().resolve(op, impl, **request)``: the callable chosen for ``op``.

    Request fields: device, dtype, head_dim, causal, window, gqa, mask, bias, backward, capability.
    """
    return default_registry().resolve(op, impl, **request)
