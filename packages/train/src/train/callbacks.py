"""Trainer callbacks: plugins named in ``train.callbacks`` plus objects passed in, called on rank 0.

A plugin is an entry point in the ``lmstack.callbacks`` group naming a zero-argument factory (usually the class,
e.g. ``governance = "governance.hooks:GovernanceCallback"``) or a ready callback object. ``train.callbacks: null``
means every installed plugin, ``[]`` none, ``[governance]`` just that one (unknown names list the valid ones).
Each callback implements any subset of ``specs.protocols.TrainerCallback``; missing hooks are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from specs.plugins import selected

HOOKS = ("on_step", "on_checkpoint", "on_eval", "on_end")


def _instantiate(obj: Any) -> Any:
    if isinstance(obj, type) or (callable(obj) and not any(hasattr(obj, h) for h in HOOKS)):
        return obj()
    return obj


def plugin_callbacks(names: tuple[str, ...] | None) -> list[Any]:
    """Instantiate the ``lmstack.callbacks`` plugins ``names`` selects (None: all installed)."""
    return [_instantiate(obj) for _, obj in selected("lmstack.callbacks", names)]


class CallbackList:
    """Calls each hook on every callback that has it, in order, only on the main rank."""

    def __init__(self, callbacks: Iterable[Any], enabled: bool = True):
        self.callbacks = list(callbacks)
        self.enabled = enabled

    def __iter__(self):
        return iter(self.callbacks)

    def _call(self, hook: str, *args: Any) -> None:
        if not self.enabled:
            return
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def on_step(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        self._call("on_step", trainer, step, metrics)

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        self._call("on_checkpoint", trainer, path)

    def on_eval(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        self._call("on_eval", trainer, step, metrics)

    def on_end(self, trainer: Any) -> None:
        self._call("on_end", trainer)
