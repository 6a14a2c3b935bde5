"""Launch hints for callers that know more than one op call does: a decode loop knows its rows and that its
weights are frozen, which decides whether chaining its matmuls by programmatic dependent launch (PDL) is safe
and measured faster, and which weights the next kernels will read (worth pulling into L2 ahead of them)."""

from __future__ import annotations

import os

import torch

from specs.errors import ConfigError


def one_row_pdl_linear(device: torch.device | str) -> str | None:
    """The ``linear`` implementation a batch-1 decode step with frozen weights should route its Linears through
    when it compiles with PDL: ``"triton_skinny_pdl"`` where this card's measured gemv table
    (``kernel.triton.gemv``) chains some weight shape by PDL (on an H200 every 1.1B decode projection, the LM head
    included; chaining first measured 1,130-1,150 tokens/s against 1,084 with the same tiles launched plainly,
    docs/benchmarks.md runs T-V), else None (keep the registry's choice). Needs CUDA with compute capability 9.0+ and
    Triton."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index) < (9, 0):
        return None
    try:
        from kernel.triton.gemv import has_pdl_tiles
    except ImportError:  # no Triton
        return None
    return "triton_skinny_pdl" if has_pdl_tiles(torch.cuda.get_device_name(index)) else None


L2_PREFETCH_ENV = "LMSTACK_L2_PREFETCH_BYTES"


def l2_prefetch_budget(device: torch.device | str) -> int:
    """The largest weight (bytes) a decode step should have its attention kernel pull into L2 for the matmul after
    it (``decode_attention(l2_prefetch=...)``): ``$LMSTACK_L2_PREFETCH_BYTES`` when set (0: never, for
    comparisons), else half the card's L2 on CUDA (an H200's 50 MB: 25 MB, so a 1.1B layer's int8 gate/up weight,
    23 MB, and not its bf16 one, 46 MB, which would evict itself), and 0 off CUDA."""
    raw = os.environ.get(L2_PREFETCH_ENV)
    if raw is not None:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ConfigError(L2_PREFETCH_ENV, f"expected a byte count >= 0, got {raw!r}")
        return value
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0)) // 2


def l2_chain(pairs: list[tuple[torch.Tensor, torch.Tensor]], budget: int) -> int:
    """Register, for each (weight, next weight) of a decode step's gemvs, the weight the gemv after it reads, so the
    gemv of ``weight`` asks L2 for it once it runs (``$LMSTACK_L2_CHAIN`` with ``gemv``; experiment, session 21).
    Only next weights of at most ``budget`` bytes, contiguous, on CUDA. Returns how many were registered."""
    try:
        from kernel.triton import _l2
    except ImportError:  # no Triton
        return 0
    n = 0
    for w, nxt in pairs:
        if nxt.is_cuda and nxt.is_contiguous() and nxt.numel() * nxt.element_size() <= budget:
            _l2.NEXT[w.data_ptr()] = nxt
            n += 1
    return n
