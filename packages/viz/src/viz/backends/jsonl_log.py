"""The ``jsonl`` backend: every record as one JSON object a line in ``metrics.jsonl``.

The first line is ``{"format": "lmstack.viz.jsonl", "version": 1}``; then records with a ``type``:

- ``{"type": "scalars", "step": 10, "wall_time": 1.7e9, "values": {"loss": 2.31, "lr": 0.0003}}``
- ``{"type": "text", "step": 10, "wall_time": ..., "tag": "sample", "text": "..."}``
- ``{"type": "histogram", "step": 10, "wall_time": ..., "tag": "params/w", "n": .., "min": .., "max": ..,
  "mean": .., "std": .., "nonfinite": .., "edges": [...], "counts": [...]}``
- ``{"type": "hparams", "wall_time": ..., "hparams": {...}, "metrics": {...}}``

Non-finite floats are the strings ``"nan"``, ``"inf"``, ``"-inf"`` so that the file is standard JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.config import VizConfig
from viz.backends.base import Histogram, json_float
from viz.backends.linefile import LineFile

JSONL_NAME = "metrics.jsonl"
JSONL_FORMAT = "lmstack.viz.jsonl"
JSONL_HEADER = json.dumps({"format": JSONL_FORMAT, "version": 1}) + "\n"


class JsonlBackend:
    def __init__(self, log_dir: Path, cfg: VizConfig, *, flush_every: int, flush_secs: float,
                 config: Mapping[str, Any] | None = None):
        self.path = log_dir / JSONL_NAME
        self._file = LineFile(self.path, JSONL_HEADER, flush_every=flush_every, flush_secs=flush_secs)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False, default=str) + "\n")

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        self._write({"type": "scalars", "step": step, "wall_time": round(wall_time, 3),
                     "values": {k: json_float(v) for k, v in values.items()}})

    def log_text(self, step: int, tag: str, text: str, wall_time: float) -> None:
        self._write({"type": "text", "step": step, "wall_time": round(wall_time, 3), "tag": tag, "text": text})

    def log_histogram(self, step: int, tag: str, hist: Histogram, wall_time: float) -> None:
        self._write({"type": "histogram", "step": step, "wall_time": round(wall_time, 3), "tag": tag,
                     **{k: json_float(v) for k, v in hist.stats().items()},
                     "edges": list(hist.edges), "counts": list(hist.counts)})

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], wall_time: float) -> None:
        self._write({"type": "hparams", "wall_time": round(wall_time, 3), "hparams": dict(hparams),
                     "metrics": {k: json_float(v) for k, v in metrics.items()}})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
