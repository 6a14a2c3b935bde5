"""Turn SIGTERM and Ctrl-C into a request the training loop answers by checkpointing and stopping.

Schedulers (Slurm, Kubernetes, torchrun on preemption) send SIGTERM and wait a grace period; the handler only
sets a flag, the loop finishes the current step, saves a checkpoint and raises ``TrainingInterrupted``. A second
Ctrl-C while the checkpoint is being written raises ``KeyboardInterrupt`` at once, for when waiting is worse.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT set ``requested`` (the signal number) instead of killing."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
