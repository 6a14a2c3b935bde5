"""What a logging backend is: the contract, and the histogram summary all backends share.

A backend class is registered under a name in the ``lmstack.viz_backends`` entry-point group and built by
:class:`viz.session.VizSession` as ``cls(log_dir, cfg, flush_every=..., flush_secs=..., config=...)``. The session
has already validated tags and turned values into floats, and stamps every record with one ``wall_time`` (Unix
seconds), so backends only format and write. ``config`` is the run's config for a backend that wants it when it
opens (the session also logs it, flattened to dotted keys, through ``log_hparams`` right after).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from specs.config import VizConfig
from viz.errors import VizError


@dataclass(frozen=True, kw_only=True)
class Histogram:
    """Summary of a tensor's values: moments and ``bins`` equal-width bucket counts over [min, max].

    ``edges`` has one more entry than ``counts``. Non-finite values are left out of every figure and counted in
    ``nonfinite`` (a NaN weight should show up as that count, not break the chart).
    """

    n: int
    min: float
    max: float
    mean: float
    std: float
    sum: float
    sum_squares: float
    nonfinite: int
    edges: tuple[float, ...]
    counts: tuple[float, ...]

    @classmethod
    def of(cls, values: Any, bins: int = 64, *, tag: str = "values") -> Histogram:
        """Summarise ``values`` (tensor or sequence, any shape) where it lives (GPU tensors stay on the GPU:
        only the figures and counts are copied back, in one sync)."""
        if bins < 1:
            raise VizError(f"histogram {tag!r}: bins must be >= 1, got {bins}")
        x = torch.as_tensor(values).detach().reshape(-1)
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mask = torch.isfinite(x)
        finite = x if bool(mask.all()) else x[mask]
        if finite.numel() == 0:
            raise VizError(f"histogram {tag!r}: no finite values among {x.numel()}")
        lo_t, hi_t = torch.aminmax(finite)
        lo, hi = lo_t.item(), hi_t.item()
        mean = finite.mean(dtype=torch.float64)
        moments = torch.stack([mean, finite.std(correction=0).double(), finite.sum(dtype=torch.float64),
                               torch.linalg.vector_norm(finite, dtype=torch.float64).square()]).tolist()
        # One bucket of zero width is not drawable: widen it symmetrically.
        edge_lo, edge_hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
        counts = torch.histc(finite, bins=bins, min=edge_lo, max=edge_hi).tolist()
        edges = torch.linspace(edge_lo, edge_hi, bins + 1, dtype=torch.float64).tolist()
        return cls(n=finite.numel(), min=lo, max=hi, mean=moments[0], std=moments[1], sum=moments[2],
                   sum_squares=moments[3], nonfinite=x.numel() - finite.numel(), edges=tuple(edges),
                   counts=tuple(counts))

    def stats(self) -> dict[str, float]:
        """The scalar figures, for line-oriented logs."""
        return {"n": self.n, "min": self.min, "max": self.max, "mean": self.mean, "std": self.std,
                "nonfinite": self.nonfinite}


class Backend(Protocol):
    """One log destination. ``flush`` makes everything logged so far durable; ``close`` flushes and releases."""

    def __init__(self, log_dir: Path, cfg: VizConfig, *, flush_every: int, flush_secs: float,
                 config: Mapping[str, Any] | None = None) -> None: ...

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None: ...

    def log_text(self, step: int, tag: str, text: str, wall_time: float) -> None: ...

    def log_histogram(self, step: int, tag: str, hist: Histogram, wall_time: float) -> None: ...

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], wall_time: float) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def json_float(x: float) -> float | str:
    """NaN and infinities as the strings 'nan', 'inf', '-inf', so JSON stays standard (any reader can parse it)."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
