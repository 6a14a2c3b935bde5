"""Reading a trial's metrics while it runs: the viz ``csv`` backend's long-format ``scalars.csv``
(``step,tag,value,wall_time``, one row per scalar, appended as training goes).

The reader keeps its byte offset and consumes only whole lines, so a row the trainer is half-way through writing
is read on the next poll (TensorBoard's event-file loader tails files the same way).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ScalarTail:
    """Incremental reader of one ``scalars.csv``: :meth:`poll` returns the ``(step, value)`` rows of ``tag`` added
    since the last call. Rows that do not parse (the header, a torn line after a crash) are skipped."""

    path: Path
    tag: str
    offset: int = 0
    tags: set[str] = field(default_factory=set)  # every tag seen, for the error when ``tag`` never shows up
    _partial: bytes = b""

    def poll(self) -> list[tuple[int, float]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended on a newline
        out: list[tuple[int, float]] = []
        for raw in lines:
            parts = raw.decode("utf-8", "replace").strip().split(",")
            if len(parts) < 3 or parts[0] == "step":
                continue
            try:
                step, value = int(parts[0]), float(parts[2])
            except ValueError:
                continue
            self.tags.add(parts[1])
            if parts[1] == self.tag:
                out.append((step, value))
        return out


def reduce_values(values: list[tuple[int, float]], how: str) -> float:
    """The objective of a finished trial from its logged ``(step, value)`` rows: the ``last``, ``min`` or ``max``.
    A non-finite value anywhere is the objective (a diverged run is not rescued by an earlier good value)."""
    if not values:
        raise ValueError("no values logged")
    bad = [v for _, v in values if not math.isfinite(v)]
    if bad:
        return bad[0]
    vals = [v for _, v in values]
    return {"last": vals[-1], "min": min(vals), "max": max(vals)}[how]


def scalars_path(trial_dir: str | os.PathLike[str]) -> Path:
    return Path(trial_dir) / "logs" / "scalars.csv"
