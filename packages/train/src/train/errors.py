"""Errors the trainer raises for bad input or a run that cannot go on."""

from __future__ import annotations

from dist.state import CheckpointError
from specs.errors import LmstackError


class TrainingError(LmstackError):
    """Training cannot continue (for example the loss became NaN/inf under ``nan_policy='stop'``)."""


class TrainingInterrupted(LmstackError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved at ``path`` before stopping."""

    def __init__(self, signum: int, step: int, path: str | None):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved to {path}")


__all__ = ["CheckpointError", "TrainingError", "TrainingInterrupted"]
