"""The train hook: every checkpoint the Trainer writes becomes a new registry version.

``RegistryCallback`` is the ``lmstack.callbacks`` entry point ``registry`` (``specs.protocols.TrainerCallback``);
train builds it with no arguments (``train.callbacks``), so it reads ``$LMSTACK_REGISTRY`` (the registry root) and
``$LMSTACK_REGISTRY_MODEL`` (the model name). With either unset it does nothing, and says so once in the log.
A version is the whole checkpoint, its optimizer state included: the checkpoint's modelcard.json lists every
file, and loading verifies them all. Each version records the step, the latest evaluation metrics
(``eval.loss``, ``eval.ppl``: what promotion gates such as ``{"eval.ppl": {"max": 20}}`` read) and, as its parent,
the version this run registered before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from registry.lifecycle import Registry

log = logging.getLogger("registry")
ROOT_ENV = "LMSTACK_REGISTRY"
MODEL_ENV = "LMSTACK_REGISTRY_MODEL"


class RegistryCallback:
    """Register each checkpoint directory. ``root`` and ``model`` default to the environment variables above."""

    def __init__(self, root: str | os.PathLike[str] | None = None, model: str | None = None, *,
                 actor: str = "train", tags: tuple[str, ...] = ("checkpoint",)):
        self.root = root if root is not None else os.environ.get(ROOT_ENV) or None
        self.model = model if model is not None else os.environ.get(MODEL_ENV) or None
        self.actor = actor
        self.tags = tags
        self.eval_metrics: dict[str, float] = {}
        self.last_version: int | None = None
        self.registered: list[int] = []
        self._said_inactive = False

    @property
    def active(self) -> bool:
        return self.root is not None and self.model is not None

    def on_step(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        return None

    def on_eval(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        self.eval_metrics = {k: float(v) for k, v in metrics.items()}

    def on_end(self, trainer: Any) -> None:
        return None

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        if not self.active:
            if not self._said_inactive:
                missing = [e for e, v in ((ROOT_ENV, self.root), (MODEL_ENV, self.model)) if v is None]
                log.info("registry callback inactive: %s unset, checkpoints are not registered", " and ".join(missing))
                self._said_inactive = True
            return
        metadata: dict[str, Any] = {"source": str(path)}
        step = getattr(trainer, "global_step", None)
        if isinstance(step, int):
            metadata["step"] = step
        if self.eval_metrics:
            metadata["eval"] = dict(self.eval_metrics)
        with Registry(self.root) as reg:
            v = reg.register(self.model, path, metadata=metadata, tags=self.tags, parent=self.last_version,
                             actor=self.actor)
        self.last_version = v.version
        self.registered.append(v.version)
        log.info("registered checkpoint %s as %s v%d (%s)", path, self.model, v.version, v.digest[:19])
