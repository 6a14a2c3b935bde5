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
  before any data is), and micro-batches must not split a pair. An objective whose rows come in groups of other
  sizes (rl's ``contrastive``: a query, its positive and any number of negatives) sets ``checks_groups`` True and
  its module refuses a micro-batch that splits a group; the Trainer then does not ask for an even row count.

An online objective (rl's ``grpo``, ``train.grpo``) also has:

- ``prompts``: True: the loader yields prompt batches (its and its builder's ``prompts`` attribute), which
  ``prepare`` turns into training batches;
- ``prepare(batch, trainer)``: ``(Batch, stats)`` from one of the loader's batches (this rank's share), e.g. the
  policy's sampled completions with their advantages, and 0-dim tensors to log beside the module's;
- ``fields``: the Batch fields besides ``input_ids`` and ``labels`` that its module takes (``advantages``);
- ``iterations`` (optional, default 1): how many optimizer steps ``Trainer.fit`` takes on each prepared batch
  before it prepares the next from the loader (GRPO's ``num_iterations``). ``Trainer.step`` prepares every call.

Any objective may have ``prepare`` (DPO's ``precompute_reference`` adds each row's reference log-probabilities
there) and ``fields``; the Trainer calls ``prepare`` on every batch it trains or evaluates on.
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
    """The objective ``train`` asks for: :class:`TokenCrossEntropy`, the ``train.preference.method`` plugin, or the
    ``train.grpo.method`` plugin (``grpo``, ``rloo``) for ``train.grpo``."""
    if train.grpo is not None:
        method, field, cfg = train.grpo.method, "train.grpo.method", train.grpo
    elif train.preference is not None:
        method, field, cfg = train.preference.method, "train.preference.method", train.preference
    else:
        return TokenCrossEntropy()
    try:
        factory = resolve(GROUP, method)
    except PluginError as exc:
        raise ConfigError(field, f"{method!r} is not an installed {GROUP} plugin (pip install lmstack-rl for dpo, "
                                 f"orpo, cpo, simpo, reward, kto, contrastive, grpo and rloo): {exc}") from None
    return factory(cfg)


def check(run: RunConfig) -> None:
    """Before any work: the objective's own checks, and that the ``data.dataset`` builder yields what it trains on
    (:func:`kind`: its ``paired`` or ``prompts`` attribute; neither, plain rows)."""
    obj = build(run.train)
    obj.check(run)
    try:
        builder = resolve("lmstack.datasets", run.data.dataset)
    except PluginError:
        return  # build_data names the valid datasets
    check_loader(obj, builder)


def kind(x: Any) -> str:
    """What a loader, a dataset builder or an objective deals in: ``pairs``, ``prompts`` or plain ``rows``."""
    if getattr(x, "paired", False):
        return "pairs"
    return "prompts" if getattr(x, "prompts", False) else "rows"


_NEEDS = {"pairs": "pairs of a chosen and a rejected completion (data.dataset: preference, lmstack-rl)",
          "prompts": "prompts to sample completions for (data.dataset: prompts, lmstack-rl)",
          "rows": "token rows (data.dataset: shards, chat, ...)"}


def check_loader(obj: Any, loader: Any, field: str = "data.dataset") -> None:
    """The loader (or its builder) yields what the objective trains on: pairs for a preference objective, prompts
    for an online one, rows for next-token cross-entropy (pairs or prompts would otherwise train as plain rows)."""
    if loader is None:
        return
    want, got = kind(obj), kind(loader)
    if want == got:
        return
    if want == "rows":
        what = {"pairs": "preference pairs (chosen, rejected)", "prompts": "prompts"}[got]
        fix = "train.preference (e.g. --train.preference.method dpo)" if got == "pairs" else "train.grpo"
        raise ConfigError("train.preference" if got == "pairs" else "train.grpo",
                          f"the data are {what}, but no objective for them is set; set {fix}")
    raise ConfigError(field, f"the {obj.name!r} objective trains on {_NEEDS[want]}; this data yields {_NEEDS[got]}")
