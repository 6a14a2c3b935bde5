"""Activation probes: forward hooks on named modules that record mean, std, max |x| and the fraction of zeros.

Modules are chosen by ``fnmatch`` patterns over ``model.named_modules()`` names (``"*layers.*.mlp"``: ``*``
matches dots too). Hooks exist only while a probe step is being recorded: ``arm(step)`` registers them when
``step % every == 0``, ``collect()`` removes them and returns the figures, so a model that is not being probed runs
with no hooks at all (torch then skips hook dispatch entirely). The statistics stay on the device until
``collect``, which synchronises once.

Figures are named ``probe/<module>/{mean,std,absmax,zero_frac}``; when a module runs several times in a step
(gradient accumulation, weight sharing) mean, std and zero_frac are averaged over the calls and absmax is the
largest. This is the "activation statistics" monitor of e.g. OLMo's and Megatron's training logs: a residual
stream whose absmax grows without bound, or an MLP whose zero fraction heads to 1 (dead ReLUs), shows here first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from specs.errors import ConfigError
from specs.protocols import MetricsLogger

STATS = ("mean", "std", "absmax", "zero_frac")


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


class ActivationProbes:
    """Forward-hook statistics for the modules of ``model`` whose names match ``patterns``.

    ``every``: probe steps are those with ``step % every == 0``. ``session``: where ``collect`` logs the figures
    (any MetricsLogger). ``grad_only``: record only forwards run with autograd on, so an evaluation or generation
    pass inside a probe step does not mix into the training figures.

    Usage::

        probes = ActivationProbes(model, ("model.layers.*.mlp",), every=100, session=viz)
        for step in range(steps):
            with probes.step(step):  # hooks only when step % 100 == 0
                loss = model(x).mean()
    """

    def __init__(self, model: nn.Module, patterns: Sequence[str] = ("*layers.*.mlp",), every: int = 1, *,
                 session: MetricsLogger | None = None, prefix: str = "probe", grad_only: bool = False):
        if every < 1:
            raise ConfigError("viz.probes", f"every must be >= 1, got {every}")
        if isinstance(patterns, str):
            patterns = (patterns,)
        names = [n for n, _ in model.named_modules() if n]
        for p in patterns:
            if not any(fnmatch(n, p) for n in names):
                sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ConfigError("viz.probes", f"pattern {p!r} matches no module of {type(model).__name__}; "
                                                f"module names look like: {sample or '(no submodules)'}")
        self.modules = [(n, m) for n, m in model.named_modules() if n and any(fnmatch(n, p) for p in patterns)]
        self.every = every
        self.session = session
        self.prefix = prefix
        self.grad_only = grad_only
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._acc: dict[str, tuple[torch.Tensor, int]] = {}  # name -> ((mean, std, absmax, zero_frac) sums, calls)
        self._step: int | None = None
        self.last: dict[str, float] = {}  # the figures of the latest collect()

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def is_probe_step(self, step: int) -> bool:
        return bool(self.modules) and step % self.every == 0

    def arm(self, step: int) -> bool:
        """Register the hooks if ``step`` is a probe step; return whether they are now registered."""
        if self.armed:
            return True
        if not self.is_probe_step(step):
            return False
        self._step = step
        self._acc.clear()
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules]
        return True

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.grad_only and not torch.is_grad_enabled():
                return
            x = _first_tensor(output)
            if x is None or not x.is_floating_point() or x.numel() == 0:
                return
            with torch.no_grad():
                xf = x.detach().float()
                stats = torch.stack([xf.mean(), xf.std(correction=0), xf.abs().amax(), (xf == 0).float().mean()])
            if name in self._acc:
                prev, calls = self._acc[name]
                stats = torch.stack([prev[0] + stats[0], prev[1] + stats[1], torch.maximum(prev[2], stats[2]),
                                     prev[3] + stats[3]])
                self._acc[name] = (stats, calls + 1)
            else:
                self._acc[name] = (stats, 1)
        return hook

    def remove(self) -> None:
        """Drop the hooks and whatever they recorded."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._acc.clear()

    def collect(self, step: int | None = None) -> dict[str, float]:
        """Remove the hooks and return the figures; log them to the session at ``step`` (default: the armed step)."""
        acc = dict(self._acc)
        at = self._step if step is None else step
        self.remove()
        if not acc:
            self.last = {}
            return {}
        names = list(acc)
        table = torch.stack([acc[n][0].cpu() for n in names]).tolist()  # one device sync for every module
        out: dict[str, float] = {}
        for name, row in zip(names, table):
            calls = acc[name][1]
            for stat, v in zip(STATS, row):
                out[f"{self.prefix}/{name}/{stat}"] = v if stat == "absmax" else v / calls
        if self.session is not None and at is not None:
            self.session.log_scalars(at, out)
        self.last = out
        return out

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[bool]:
        """Record the forwards run inside the block if ``step`` is a probe step; yields whether it is."""
        armed = self.arm(step)
        try:
            yield armed
        finally:
            if armed:
                self.collect(step)
