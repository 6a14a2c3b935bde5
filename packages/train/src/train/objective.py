"""What a training step minimises. By default next-token cross-entropy (:class:`TokenCrossEntropy`: the module is
``train.loss.LossModule``, micro-batches weighted by their target tokens). ``train.preference`` names an
``lmstack.objectives`` plugin instead (lmstack-rl's ``dpo`` and ``orpo``): train does not import rl.

An objective plugin is a factory, ``plugin(cfg)`` with ``cfg`` the run's ``specs.config.PreferenceConfig``, that
returns an object with:

- ``check(run)``: before any work (``train.run``'s preflight, with the RunConfig); a ConfigError for options it
  cannot run.
- ``module(model, *, train, device)``: the ``nn.Module`` the Trainer calls, wrapped by ``dist.apply`` as
  ``LossModule`` is (``train`` is the TrainConfig). Its ``forward(input_ids, labels, **fields)`` returns ``(loss,
  stats)``: the micro-batch's loss, a mean over its units, and a dict of 0-dim tensors to log, each a mean over
  the same units.
- ``units(labels)``: how many units (pairs) a micro-batch's rows hold, a tensor; a step's loss is then the mean
  over the whole batch's units, however it is split into micro-batches and ranks.
- ``paired``: True when a batch holds pairs in consecutive rows (chosen, then rejected): the data loader must say
  it yields them (a ``paired`` attribute of True on the loader and on its ``lmstack.datasets`` builder, read
  before any data is), and micro-batches must not split a pair.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from specs.batch import IGNORE_INDEX
from specs.config import RunConfig, TrainConfig
from specs.errors import ConfigError, PluginError
from specs.plugins import resolve
from train.loss import LossModule

GROUP = "lmstack.objectives"


class TokenCrossEntropy:
    """Next-token cross-entropy, the default objective: ``model.loss`` through :class:`train.loss.LossModule`."""

    name = "lm"
    paired = False

    def check(self, run: RunConfig) -> None:
        return None

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        return LossModule(model)

    @staticmethod
    def units(labels: torch.Tensor) -> torch.Tensor:
        return (labels != IGNORE_INDEX).sum()


def build(train: TrainConfig) -> Any:
    """The objective ``train`` asks for: :class:`TokenCrossEntropy`, or the ``train.preference.method`` plugin."""
    if train.preference is None:
        return TokenCrossEntropy()
    method = train.preference.method
    try:
        factory = resolve(GROUP, method)
    except PluginError as exc:
        raise ConfigError("train.preference.method", f"{method!r} is not an installed {GROUP} plugin (pip install "
                          f"lmstack-rl for dpo and orpo): {exc}") from None
    return factory(train.preference)


def check(run: RunConfig) -> None:
    """Before any work: the objective's own checks, and paired data exactly for a paired objective (the
    ``data.dataset`` builder's ``paired`` attribute; absent, it yields plain rows)."""
    obj = build(run.train)
    obj.check(run)
    try:
        builder = resolve("lmstack.datasets", run.data.dataset)
    except PluginError:
        return  # build_data names the valid datasets
    check_loader(obj, builder)


def check_loader(obj: Any, loader: Any, field: str = "data.dataset") -> None:
    """A paired objective needs a loader that yields pairs (``loader.paired``); a pair-yielding loader needs a
    paired objective (its rows would otherwise train as plain sequences, the rejected ones too)."""
    if loader is None:
        return
    paired = bool(getattr(loader, "paired", False))
    if obj.paired and not paired:
        raise ConfigError(field, f"train.preference.method={obj.name!r} trains on pairs of a chosen and a rejected "
                                 "completion; use a loader that yields them (data.dataset: preference, lmstack-rl)")
    if paired and not obj.paired:
        raise ConfigError("train.preference", "the data are preference pairs (chosen, rejected), but no preference "
                                              "objective is set; set train.preference (e.g. --train.preference.method"
                                              " dpo)")
