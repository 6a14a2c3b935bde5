"""GPU memory figures from the CUDA caching allocator (``torch.cuda.memory_stats``), in GiB.

``max_*`` are peaks since the process started or since the caller last ran ``torch.cuda.reset_peak_memory_stats``
(this module never resets them: the trainer may be reading them too). ``alloc_retries`` counts cudaMalloc calls
that had to flush the cache first, the usual first sign of fragmentation before an out-of-memory error.
Returns ``{}`` when CUDA is absent or not yet initialised, so CPU runs and CPU-only models log nothing and do not
create a CUDA context as a side effect.
"""

from __future__ import annotations

import torch

GiB = 1024**3


def cuda_memory_stats(device: int | torch.device | None = None) -> dict[str, float]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    stats = torch.cuda.memory_stats(device)
    return {
        "mem/allocated_gib": stats.get("allocated_bytes.all.current", 0) / GiB,
        "mem/max_allocated_gib": stats.get("allocated_bytes.all.peak", 0) / GiB,
        "mem/reserved_gib": stats.get("reserved_bytes.all.current", 0) / GiB,
        "mem/max_reserved_gib": stats.get("reserved_bytes.all.peak", 0) / GiB,
        "mem/alloc_retries": float(stats.get("num_alloc_retries", 0)),
        "mem/ooms": float(stats.get("num_ooms", 0)),
    }
