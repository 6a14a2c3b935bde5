"""Adapters a run trains instead of the whole model (``train.lora``), through the ``lmstack.adapters`` plugin
``lora`` (lmstack-compress's LoRA): train does not import compress. The plugin's ``apply(model, cfg)`` adapts the
model in place and freezes the rest (the Trainer then optimises what still requires grad); its
``save(weights_file, directory, cfg, base_model)`` writes a checkpoint's adapters as PEFT does; its
``disabled(model)`` is a context in which the model computes without them (a preference objective's reference);
its ``merged_state_dict(model)`` is the adapted model's weights with the adapters merged in (an online objective's
sampling copy)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from specs.config import RunConfig
from specs.errors import ConfigError, PluginError
from specs.plugins import resolve

GROUP, NAME = "lmstack.adapters", "lora"


def plugin() -> Any:
    """The LoRA plugin, or a ConfigError saying what to install."""
    try:
        return resolve(GROUP, NAME)
    except PluginError as exc:
        raise ConfigError("train.lora", f"needs the {GROUP} plugin {NAME!r} (pip install lmstack-compress): "
                          f"{exc}") from None


def apply(model: Any, cfg: Any) -> int:
    """Adapt ``model`` for ``cfg`` (a LoraConfig); returns the number of layers adapted."""
    return plugin().apply(model, cfg)


def save(weights: str | os.PathLike[str], directory: str | os.PathLike[str], cfg: Any,
         base_model: str | None = None) -> Any:
    return plugin().save(weights, directory, cfg, base_model=base_model)


def disabled(model: Any) -> contextlib.AbstractContextManager[int]:
    """A context in which the adapted ``model`` computes as its base model (the plugin's ``disabled``)."""
    return plugin().disabled(model)


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The adapted ``model``'s weights as the ``state_dict`` of its merged model (the plugin's
    ``merged_state_dict``; the model is not changed): what a copy of the policy that samples loads."""
    return plugin().merged_state_dict(model)


def check(cfg: RunConfig) -> None:
    """Before any work: ``train.lora`` adapts the model ``cfg.model`` describes (its targets name Linear layers of
    it), tried on a copy built on the meta device (no memory, no weights)."""
    if cfg.train.lora is None:
        return
    with torch.device("meta"):
        apply(resolve("lmstack.models", cfg.model.arch)(cfg.model), cfg.train.lora)

