"""The ``tensorboard`` backend: TensorBoard event files written by ``torch.utils.tensorboard.SummaryWriter``.

Scalars, text (the text plugin), histograms (``add_histogram_raw`` with the session's buckets, so every backend shows
the same bins) and hyperparameters (the HParams plugin). Unlike ``SummaryWriter.add_hparams``, which opens a new
sub-run per call, hyperparameters are written into this run's own event file, so the HParams table links to the
run's curves. ``tensorboard --logdir <log_dir>`` shows everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.config import VizConfig
from specs.errors import ConfigError
from viz.backends.base import Histogram


class TensorBoardBackend:
    def __init__(self, log_dir: Path, cfg: VizConfig, *, flush_every: int, flush_secs: float,
                 config: Mapping[str, Any] | None = None):
        try:
            import tensorboard  # noqa: F401  (torch's writer needs it; fail here with the install line)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError("viz.backend", f"backend 'tensorboard' needs the tensorboard package "
                                             f"(pip install tensorboard): {exc}") from None
        # SummaryWriter's queue flushes every max_queue events and every flush_secs (its own thread).
        self._writer = SummaryWriter(log_dir=str(log_dir), max_queue=flush_every, flush_secs=max(1, int(flush_secs)))
        self.log_dir = log_dir

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step, walltime=wall_time)

    def log_text(self, step: int, tag: str, text: str, wall_time: float) -> None:
        self._writer.add_text(tag, text, step, walltime=wall_time)

    def log_histogram(self, step: int, tag: str, hist: Histogram, wall_time: float) -> None:
        self._writer.add_histogram_raw(tag, min=hist.min, max=hist.max, num=hist.n, sum=hist.sum,
                                       sum_squares=hist.sum_squares, bucket_limits=list(hist.edges[1:]),
                                       bucket_counts=list(hist.counts), global_step=step, walltime=wall_time)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], wall_time: float) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # The HParams plugin takes numbers, strings and bools only; anything else is shown as its text.
        hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(hp, dict(metrics))
        fw = self._writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary, walltime=wall_time)
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, walltime=wall_time)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
