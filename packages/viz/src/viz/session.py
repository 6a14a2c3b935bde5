"""VizSession: one object the trainer, a serve loop or a notebook logs to, fanned out to several backends.

``VizSession(cfg.viz)`` opens every backend named in ``cfg.backend`` (plugins of the ``lmstack.viz_backends``
entry-point group: csv, jsonl, tensorboard, wandb) under one log directory, and is both a
:class:`specs.protocols.MetricsLogger` and a :class:`specs.protocols.TrainerCallback`:

- ``log_scalars / log_text / log_hparams / log_histogram``, buffered; ``flush`` makes them durable; ``close``
  (or leaving a ``with`` block) flushes and releases. A run killed mid-way keeps every flushed record.
- ``on_step`` logs the trainer's metrics every ``cfg.log_every`` steps with GPU memory figures, collects
  activation probes (``cfg.probes``), parameter/gradient histograms (``cfg.histogram_every``) and drives the
  profiler (``cfg.profile_every_n_steps``, traces under ``<log_dir>/profiles``); ``on_eval`` logs ``eval/*``;
  ``on_checkpoint`` flushes; ``on_end`` closes.

Only rank 0 of a torch.distributed job writes (the other ranks' sessions are silent), as in torchtitan's logger.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from specs.config import VizConfig
from specs.errors import ConfigError
from specs.plugins import resolve
from viz.backends.base import Backend, Histogram
from viz.errors import VizError
from viz.memory import cuda_memory_stats
from viz.probes import ActivationProbes
from viz.profiler import StepProfiler

DEFAULT_LOG_DIR = "runs/viz"


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _check_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not tag or "\n" in tag or "\r" in tag:
        raise VizError(f"metric names must be non-empty one-line strings, got {tag!r}")
    return tag


def _to_float(tag: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise VizError(f"scalar {tag!r} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
        return float(value)
    raise VizError(f"scalar {tag!r} must be a number, got {type(value).__name__} {value!r:.60}")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``); values become
    numbers, bools or strings (sequences and None as their text; NaN/inf as 'nan'/'inf')."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, float) and not math.isfinite(v):
            out[key] = str(v)
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(list(v) if isinstance(v, tuple) else v)
    return out


class VizSession:
    """Fan-out logger and trainer callback. See the module docstring.

    ``run_dir`` overrides ``cfg.log_dir`` (default ``runs/viz``). ``config`` (the run's config as a dict) is
    logged as hyperparameters and handed to W&B. Buffers flush every ``flush_every`` log calls and with the
    first call ``flush_secs`` after the last flush. ``rank`` defaults to the torch.distributed rank (or the
    ``RANK`` variable torchrun sets); sessions on other ranks than 0 write nothing.
    """

    def __init__(self, cfg: VizConfig, run_dir: str | os.PathLike[str] | None = None, *,
                 config: Mapping[str, Any] | None = None, flush_every: int = 50, flush_secs: float = 10.0,
                 rank: int | None = None):
        if len(set(cfg.backend)) != len(cfg.backend):
            raise ConfigError("viz.backend", f"each backend may appear once, got {list(cfg.backend)}")
        self.cfg = cfg
        self.log_dir = Path(run_dir or cfg.log_dir or DEFAULT_LOG_DIR)
        self.rank = _rank() if rank is None else rank
        self.enabled = self.rank == 0
        self.backends: dict[str, Backend] = {}
        self._closed = False
        self._model: nn.Module | None = None
        self.probes: ActivationProbes | None = None
        self.profiler = StepProfiler(self.log_dir / "profiles", cfg.profile_every_n_steps if self.enabled else 0,
                                     cfg.profile_steps)
        if not self.enabled:
            return
        try:
            for name in cfg.backend:
                cls = resolve("lmstack.viz_backends", name)
                self.backends[name] = cls(self.log_dir, cfg, flush_every=flush_every, flush_secs=flush_secs,
                                          config=config)
        except BaseException:
            self.close()  # the backends opened so far release their files
            raise
        if config:
            self.log_hparams(config)

    # --- MetricsLogger ---------------------------------------------------------------------------------------
    def log_scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log numbers (floats, ints, bools, one-element tensors: ``.item()`` syncs a GPU) at ``step``."""
        if not self.backends or not values:
            return
        clean = {_check_tag(k): _to_float(k, v) for k, v in values.items()}
        now = time.time()
        for b in self.backends.values():
            b.log_scalars(int(step), clean, now)

    def log_text(self, step: int, tag: str, text: str) -> None:
        if not self.backends:
            return
        now = time.time()
        for b in self.backends.values():
            b.log_text(int(step), _check_tag(tag), str(text), now)

    def log_histogram(self, step: int, tag: str, values: Any, bins: int = 64) -> None:
        """Log the distribution of ``values`` (a tensor or sequence of numbers, any shape) as ``bins`` buckets."""
        if not self.backends:
            return
        hist = Histogram.of(values, bins, tag=_check_tag(tag))
        now = time.time()
        for b in self.backends.values():
            b.log_histogram(int(step), tag, hist, now)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> None:
        """Log hyperparameters (nested mappings are flattened to dotted keys) and optional summary metrics."""
        if not self.backends:
            return
        clean = {_check_tag(k): _to_float(k, v) for k, v in (metrics or {}).items()}
        now = time.time()
        for b in self.backends.values():
            b.log_hparams(flatten(hparams), clean, now)

    def flush(self) -> None:
        for b in self.backends.values():
            b.flush()

    def close(self) -> None:
        """Flush and release every backend; stop probes and an unfinished profiler window. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.probes is not None:
            self.probes.remove()
        self.profiler.close()
        errors = []
        for b in self.backends.values():
            try:
                b.close()
            except Exception as exc:  # close the others anyway, then report
                errors.append(exc)
        self.backends = {}
        if errors:
            raise errors[0]

    def __enter__(self) -> VizSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- model instrumentation ------------------------------------------------------------------------------
    def watch(self, model: nn.Module, *, next_step: int = 0) -> None:
        """Instrument ``model``: activation probes on ``cfg.probes`` every ``cfg.log_every`` steps and
        parameter/gradient histograms every ``cfg.histogram_every`` steps. ``next_step`` is the number the
        trainer will pass to the first ``on_step``, so that step can be probed too."""
        self._model = model
        if self.probes is not None:
            self.probes.remove()
            self.probes = None
        if self.enabled and self.cfg.probes:
            self.probes = ActivationProbes(model, self.cfg.probes, every=self.cfg.log_every, session=self,
                                           grad_only=True)
            self.probes.arm(next_step)

    def log_model_histograms(self, step: int, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.log_histogram(step, f"params/{name}", p.detach())
            if p.grad is not None:
                self.log_histogram(step, f"grads/{name}", p.grad.detach())

    # --- TrainerCallback ------------------------------------------------------------------------------------
    def on_step(self, trainer: Any, step: int, metrics: Mapping[str, Any]) -> None:
        """After training step ``step``: log, collect probes and histograms, advance the profiler."""
        if not self.enabled:
            return
        if step % self.cfg.log_every == 0:
            self.log_scalars(step, {**metrics, **cuda_memory_stats()})
        if self.probes is not None:
            if self.probes.armed:
                self.probes.collect(step)
            self.probes.arm(step + 1)  # hooks exist only during the probe steps themselves
        if self._model is not None and self.cfg.histogram_every and step % self.cfg.histogram_every == 0:
            self.log_model_histograms(step, self._model)
        self.profiler.after_step(step)

    def on_eval(self, trainer: Any, step: int, metrics: Mapping[str, Any]) -> None:
        """Log evaluation metrics under ``eval/`` (keys already starting with ``eval/`` are kept) and flush."""
        self.log_scalars(step, {k if k.startswith("eval/") else f"eval/{k}": v for k, v in metrics.items()})
        self.flush()

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        self.flush()  # the logs on disk then reach at least as far as the checkpoint a resume starts from

    def on_end(self, trainer: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VizSession(log_dir={str(self.log_dir)!r}, backends={list(self.backends)}, rank={self.rank})"
