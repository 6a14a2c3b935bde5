"""save_pretrained / from_pretrained for lmstack models, in lmstack's format or a Hugging Face one.

Saving drops tied aliases (``lm_head.weight`` when it is the embedding), stamps the ModelConfig with its
schema_version and writes through :func:`model.checkpoint.write_checkpoint` (atomic, sharded, hashed). Loading
reads config.json (lmstack, or a transformers Llama / Mistral / GPT-2 config), verifies the model card, builds the
model on the meta device (no wasted init) and assigns the checkpoint's tensors after checking every name and
shape against the config: a mismatch is a ShapeError naming the tensor, missing or unknown tensors a
CheckpointError listing them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from model import checkpoint, hf
from specs.config import ModelConfig
from specs.errors import ConfigError, ShapeError
from specs.io import config_from_dict, config_to_dict
from specs.modelcard import LineageEntry, ModelCard

M = TypeVar("M", bound=nn.Module)
FORMATS = ("lmstack", "hf")


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Parameter names that alias an earlier one (``{"lm_head.weight": "model.embed_tokens.weight"}``)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def save(model: nn.Module, cfg: ModelConfig, directory: str | os.PathLike[str], *, format: str = "lmstack",
         max_shard_size: int | str = "5GB", name: str | None = None, lineage: tuple[LineageEntry, ...] = (),
         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (whose config is ``cfg``) as a checkpoint directory; returns it."""
    if format not in FORMATS:
        raise ConfigError("format", f"unknown checkpoint format {format!r}; valid: {', '.join(FORMATS)}")
    aliases = tied_aliases(model)
    state = {k: v for k, v in model.state_dict().items() if k not in aliases}
    dtype = next(iter(state.values())).dtype
    if format == "hf":
        config, state = hf.config_to_hf(cfg, dtype), hf.state_to_hf(cfg, state)
    else:
        config = config_to_dict(cfg)
    meta = {"format": format, "model_class": type(model).__name__, "dtype": str(dtype).removeprefix("torch."),
            "num_params": sum(p.numel() for p in model.parameters()), **(metadata or {})}
    return checkpoint.write_checkpoint(directory, state, config, name=name or Path(directory).name,
                                       max_shard_size=max_shard_size, lineage=lineage, metadata=meta)


def load(build: Callable[[ModelConfig, Mapping[str, Any]], M], directory: str | os.PathLike[str], *,
         dtype: torch.dtype | None = None, device: str | torch.device = "cpu", verify: bool = True,
         allow_hf: bool = True) -> M:
    """Build with ``build(cfg, card_metadata)`` and load the checkpoint in ``directory`` into it."""
    doc = checkpoint.read_config(directory)
    is_hf = hf.is_hf_config(doc)
    if is_hf and not allow_hf:
        raise ConfigError("format", f"{directory} is a Hugging Face {doc.get('model_type')} checkpoint; this model "
                          "class reads lmstack checkpoints only")
    card = checkpoint.verify_card(directory, required=not is_hf) if verify else None
    if card is None and (Path(directory) / checkpoint.CARD).is_file():
        card = ModelCard.load(Path(directory) / checkpoint.CARD)
    cfg = hf.config_from_hf(doc) if is_hf else config_from_dict(doc, ModelConfig)
    state = checkpoint.read_weights(directory, device=device)
    if is_hf:
        state = hf.state_from_hf(cfg, doc["model_type"], state)
    with torch.device("meta"):
        model = build(cfg, dict(card.metadata) if card is not None else {})
    assign_state(model, state, source=str(directory), dtype=dtype)
    return model.to(device)


def assign_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
                 dtype: torch.dtype | None = None) -> None:
    """Check ``state`` against ``model``'s parameters and buffers by name and shape, then assign it (re-tying)."""
    aliases = tied_aliases(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in aliases}
    state = {k: v for k, v in state.items() if k not in aliases}  # a saved copy of a tied weight is redundant
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_few(unexpected)}")
        raise checkpoint.CheckpointError(f"{source}: does not match the model its config describes: "
                                         f"{'; '.join(parts)}")
    for k, want in expected.items():
        if tuple(state[k].shape) != tuple(want.shape):
            raise ShapeError(f"{source}: tensor {k!r} has shape {tuple(state[k].shape)} but the config expects "
                             f"{tuple(want.shape)}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    modules = dict(model.named_modules())
    for alias, original in aliases.items():  # assign=True replaced the original; point the alias at it again
        owner, _, leaf = alias.rpartition(".")
        src_owner, _, src_leaf = original.rpartition(".")
        setattr(modules[owner], leaf, getattr(modules[src_owner], src_leaf))


def _few(names: list[str], n: int = 6) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
