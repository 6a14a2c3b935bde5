"""The ``csv`` backend: scalars as one long-format CSV, ``scalars.csv`` with columns ``step,tag,value,wall_time``.

Long format (one row per scalar) rather than one wide row per step: the header never changes when a new metric
appears mid-run, so the file is append-only and crash-safe without rewriting it (pandas:
``pd.read_csv(p).pivot_table(index="step", columns="tag", values="value")`` gives the wide table). Values are
written with ``repr`` (full float precision; ``nan``/``inf`` as such). Text and histograms are not scalars and are
left to the other backends; hyperparameters go to ``hparams.json`` beside the CSV, replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.config import VizConfig
from specs.io import atomic_write_text
from viz.backends.base import Histogram, json_float
from viz.backends.linefile import LineFile

CSV_NAME = "scalars.csv"
CSV_COLUMNS = ("step", "tag", "value", "wall_time")
CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"


class CsvBackend:
    def __init__(self, log_dir: Path, cfg: VizConfig, *, flush_every: int, flush_secs: float,
                 config: Mapping[str, Any] | None = None):
        self.path = log_dir / CSV_NAME
        self._hparams_path = log_dir / "hparams.json"
        self._file = LineFile(self.path, CSV_HEADER, flush_every=flush_every, flush_secs=flush_secs)

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for tag, value in values.items():
            w.writerow((step, tag, repr(value), f"{wall_time:.3f}"))
        self._file.write(buf.getvalue())

    def log_text(self, step: int, tag: str, text: str, wall_time: float) -> None:
        pass

    def log_histogram(self, step: int, tag: str, hist: Histogram, wall_time: float) -> None:
        pass

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], wall_time: float) -> None:
        doc = {"hparams": dict(hparams), "metrics": {k: json_float(v) for k, v in metrics.items()}}
        atomic_write_text(self._hparams_path, json.dumps(doc, indent=2, default=str) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
