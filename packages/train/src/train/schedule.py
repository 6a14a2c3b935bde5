"""Learning-rate schedules as pure functions of the step: warmup + cosine, linear, WSD and constant.

Each returns a multiplier of the peak ``lr`` for 0-based optimizer step ``s`` of ``total`` steps:

- warmup (every schedule): ``(s + 1) / W`` for ``s < W``, so the first step already trains and step ``W - 1``
  reaches the peak (``W = min(warmup_steps, total)``).
- ``cosine`` (Loshchilov & Hutter 2017, SGDR, without restarts): ``m + (1 - m) * (1 + cos(pi * p)) / 2``.
- ``linear``: ``1 - (1 - m) * p``.
- ``wsd`` warmup-stable-decay (Hu et al. 2024, MiniCPM; Haegele et al. 2024): the peak until the last
  ``D = round(decay_fraction * total)`` steps, then linear to ``m`` over those ``D`` steps.
- ``constant``: the peak after warmup.

``p = (s - W + 1) / (total - W)`` is the post-warmup progress in (0, 1] (WSD: ``(s - start + 1) / D``) and
``m = min_lr_ratio``: the floor the decaying schedules reach exactly on the last step ``total - 1``.
:func:`build_scheduler` wraps the function in ``LambdaLR``, whose state (``last_epoch``) is plain JSON in checkpoints.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from specs.config import TrainConfig
from specs.errors import ConfigError

SCHEDULES = ("cosine", "linear", "wsd", "constant")


def lr_multiplier(step: int, *, total: int, schedule: str, warmup: int = 0, min_ratio: float = 0.0,
                  decay_fraction: float = 0.2) -> float:
    """The peak-lr multiplier at 0-based step ``step`` (see the module docstring for each formula)."""
    if schedule not in SCHEDULES:
        raise ConfigError("train.schedule", f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    warmup = min(warmup, total)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay = round(decay_fraction * total)
        start = max(total - decay, warmup)
        if step < start or decay == 0:
            return 1.0
        p = min(1.0, (step - start + 1) / max(1, total - start))
        return 1.0 - (1.0 - min_ratio) * p
    span = total - warmup
    p = min(1.0, (step - warmup + 1) / span) if span > 0 else 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * p
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def schedule_fn(cfg: TrainConfig, total: int | None = None) -> Callable[[int], float]:
    return functools.partial(lr_multiplier, total=total or cfg.steps, schedule=cfg.schedule, warmup=cfg.warmup_steps,
                             min_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_multiplier`: after ``k`` calls to ``scheduler.step()`` the lr is that of step k."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg, total))
