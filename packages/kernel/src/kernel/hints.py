"""Launch hints for callers that know more than one op call does: a decode loop knows its rows and that its
weights are frozen, which decides whether chaining its matmuls by programmatic dependent launch (PDL) is safe
and measured faster."""

from __future__ import annotations

import torch


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
