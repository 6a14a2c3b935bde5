"""Progress on rank 0: a tqdm bar on a terminal, one log line per log interval otherwise (files, CI, Slurm)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("train")


def format_metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, fmt in (("loss", "{:.4f}"), ("lr", "{:.2e}"), ("grad_norm", "{:.3f}"), ("tokens_per_s", "{:,.0f}"),
                     ("mfu", "{:.1%}"), ("step_time_s", "{:.3f}")):
        value = metrics.get(key)
        if value is not None:
            parts.append(f"{key} {fmt.format(value)}")
    return " | ".join(parts)


class Progress:
    """``update(step, metrics)`` after each step (``metrics`` only on log steps); ``close()`` at the end."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, bar: bool | None = None):
        self.total = total
        self.enabled = enabled
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step") if enabled and use_bar else None

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if metrics:
                self._bar.set_postfix_str(format_metrics(metrics), refresh=False)
        elif metrics:
            logger.info("step %d/%d | %s", step, self.total, format_metrics(metrics))

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            logger.info("%s", message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
