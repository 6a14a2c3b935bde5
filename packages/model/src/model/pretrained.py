"""save_pretrained / from_pretrained for lmstack models, in lmstack's format or a Hugging Face one.

Saving drops tied aliases (``lm_head.weight`` when it is the embedding), checks that the tensors are those a fresh
model of the config has (a model quantized or with modules replaced after construction is refused before anything
is written: from_pretrained could not load it back), stamps the ModelConfig with its schema_version and writes
through :func:`model.checkpoint.write_checkpoint` (atomic, sharded, hashed). Loading checks ``dtype`` and
``device``, reads config.json (lmstack, or a transformers Llama / Mistral / GPT-2 config), verifies the model card,
builds the model on the meta device (no wasted init) and assigns the checkpoint's tensors after checking every name
and shape against the config: a mismatch is a ShapeError naming the tensor, missing or unknown tensors a
CheckpointError listing them.
"""

from __future__ import annotations

import json
import math
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
from tensor.nf4 import BNB_STATE, dequantize_state, from_bitsandbytes

M = TypeVar("M", bound=nn.Module)
# build(cfg, card_metadata) -> an untrained model of that config; from_pretrained builds with it on the meta device,
# and save_pretrained compares the model it writes against one
Build = Callable[[ModelConfig, Mapping[str, Any]], nn.Module]
FORMATS = ("lmstack", "hf")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "float32": torch.float32,
          "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def save(model: nn.Module, cfg: ModelConfig, directory: str | os.PathLike[str], *, build: Build,
         format: str = "lmstack", max_shard_size: int | str = "5GB", name: str | None = None,
         lineage: tuple[LineageEntry, ...] = (), metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (whose config is ``cfg``; ``build`` makes one as :func:`load` will) as a checkpoint
    directory; returns it. Nothing is written when :func:`check_unchanged` refuses the model."""
    if format not in FORMATS:
        raise ConfigError("format", f"unknown checkpoint format {format!r}; valid: {', '.join(FORMATS)}")
    aliases = tied_aliases(model)
    state = {k: v for k, v in model.state_dict().items() if k not in aliases}  # a folded model's raises here
    dtype = next(iter(state.values())).dtype
    meta = {"format": format, "model_class": type(model).__name__, "dtype": str(dtype).removeprefix("torch."),
            "num_params": sum(p.numel() for p in model.parameters()), **(metadata or {})}
    check_unchanged(model, state, build, cfg, meta, directory)
    if format == "hf":
        config, state = hf.config_to_hf(cfg, dtype), hf.state_to_hf(cfg, state)
    else:
        config = config_to_dict(cfg)
    return checkpoint.write_checkpoint(directory, state, config, name=name or Path(directory).name,
                                       max_shard_size=max_shard_size, lineage=lineage, metadata=meta)


def check_unchanged(model: nn.Module, state: Mapping[str, torch.Tensor], build: Build, cfg: ModelConfig,
                    meta: Mapping[str, Any], directory: str | os.PathLike[str]) -> None:
    """ConfigError unless ``state`` (``model``'s, tied aliases dropped) has the tensor names, shapes and kinds (float
    or not) of ``build(cfg, meta)`` built on the meta device: exactly what :func:`load` can assign back."""
    with torch.device("meta"):
        fresh = build(cfg, meta)
    aliases = tied_aliases(fresh)
    want = {k: v for k, v in fresh.state_dict().items() if k not in aliases}
    unexpected = [k for k in state if k not in want]
    missing = [k for k in want if k not in state]
    changed = [f"{k!r} {_kind(state[k])} (fresh: {_kind(w)})" for k, w in want.items()
               if k in state and _kind(state[k]) != _kind(w)]
    groups = (("unexpected", unexpected, True), ("missing", missing, True), ("changed", changed, False))
    parts = [f"{what} tensors {_few(names, 3, quote=quote)}" for what, names, quote in groups if names]
    if any(".lora_A." in k for k in unexpected):  # LoRA adapters (compress.apply_lora): merge, or save them apart
        raise ConfigError("save_pretrained", f"{directory} not written: the model has LoRA adapters "
                          f"({_few([k for k in unexpected if '.lora_A.' in k], 2)}); merge them first "
                          "(compress.merge_lora(model)) to save the fine-tuned model, or save the adapters alone "
                          "(compress.save_adapter)")
    if parts:
        raise ConfigError("save_pretrained", f"{directory} not written: this {type(model).__name__}'s tensors are not "
                          f"those of a fresh model of its config ({'; '.join(parts)}): the model was changed after "
                          "construction (quantized, or modules replaced), so from_pretrained could not load it back; "
                          "save it before that, or export the transformed model (python -m export, e.g. "
                          "--quantize int8)")


def _kind(t: torch.Tensor) -> str:
    """What a checkpoint must keep of a tensor: its shape, and whether it is floating point (a dtype may change)."""
    return f"{tuple(t.shape)} {'float' if t.is_floating_point() else str(t.dtype).removeprefix('torch.')}"


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating-point torch.dtype, or one of :data:`DTYPES`' names ('bf16', 'float32', ...), as a torch.dtype."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise ConfigError("dtype", f"expected a floating-point torch.dtype (torch.bfloat16) or one of "
                      f"{', '.join(map(repr, DTYPES))}, got {dtype!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that this machine has (ConfigError otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"{device!r} is not a torch device; expected a torch.device or a string such as "
                          "'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, NotImplementedError) as exc:  # not built with, or no such device here
        raise ConfigError("device", f"{device!r} is not available on this machine: {exc}") from None
    return dev


def read_model_config(directory: str | os.PathLike[str], *, allow_hf: bool = True) -> ModelConfig:
    """The ModelConfig of the lmstack or Hugging Face checkpoint in ``directory`` (its config.json only)."""
    return _config_from_doc(checkpoint.read_config(directory), directory, allow_hf)


def _config_from_doc(doc: Mapping[str, Any], directory: str | os.PathLike[str], allow_hf: bool) -> ModelConfig:
    if hf.is_hf_config(doc):
        if not allow_hf:
            raise ConfigError("format", f"{directory} is a Hugging Face {doc.get('model_type')} checkpoint; this "
                              "model class reads lmstack checkpoints only")
        return hf.config_from_hf(doc)
    return config_from_dict(doc, ModelConfig)


def load(build: Callable[[ModelConfig, Mapping[str, Any]], M], directory: str | os.PathLike[str], *,
         dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu", verify: bool = True,
         allow_hf: bool = True, config: ModelConfig | None = None) -> M:
    """Build with ``build(cfg, card_metadata)`` and load the checkpoint in ``directory`` into it (``dtype``: see
    :func:`resolve_dtype`; None keeps the checkpoint's). ``config``: build from it instead of the checkpoint's
    config, which must describe the same network (``ModelConfig.check_same_network``)."""
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    doc = checkpoint.read_config(directory)
    is_hf = hf.is_hf_config(doc)
    cfg = _config_from_doc(doc, directory, allow_hf)
    if config is not None:
        cfg.check_same_network(config, str(directory))
    card = checkpoint.verify_card(directory, required=not is_hf) if verify else None
    if card is None and (Path(directory) / checkpoint.CARD).is_file():
        card = ModelCard.load(Path(directory) / checkpoint.CARD)
    cfg = config or cfg
    with torch.device("meta"):  # before reading the weights: a config this class refuses fails fast
        model = build(cfg, dict(card.metadata) if card is not None else {})
    state = merge_lora_state(checkpoint.read_weights(directory, device=device), directory)
    if is_hf:
        state = hf.state_from_hf(cfg, doc["model_type"], state)
    assign_state(model, state, source=str(directory), dtype=dtype)
    return model.to(device)


LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
ADAPTER_CONFIG = Path("adapter") / "adapter_config.json"  # where a LoRA run's checkpoint keeps r and lora_alpha


def merge_lora_state(state: Mapping[str, torch.Tensor], directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``state`` with LoRA adapters folded into their layers' weights, for the checkpoint of a LoRA run
    (``train.lora``): its weights hold each adapted Linear as PEFT names it, ``<m>.base_layer.weight`` (and
    bias) plus ``<m>.lora_A.weight`` / ``<m>.lora_B.weight``, and its ``adapter/adapter_config.json`` the ``r``,
    ``lora_alpha`` and ``use_rslora`` that scale them. ``<m>.weight`` becomes base + B @ A x scale, summed in fp32
    and cast to the base's dtype, as ``compress.merge_lora`` does. A QLoRA run (``train.lora.quantize_base: nf4``)
    holds its frozen Linear weights as 4-bit groups (``<m>.nf4_data``, ...): they are dequantized first
    (``tensor.nf4``), to the dtype of the state's other floating tensors; so are the 4-bit weights of a Hugging Face
    checkpoint saved with bitsandbytes (a "-bnb-4bit" repository, NF4: ``tensor.nf4.from_bitsandbytes``). A state
    without adapters or 4-bit weights is returned as is."""
    if any(BNB_STATE in k for k in state):
        state, _ = from_bitsandbytes(state)
    if any(k.endswith(".nf4_data") for k in state):
        dtype = next((v.dtype for k, v in state.items() if v.is_floating_point() and ".nf4_" not in k), torch.float32)
        state = dequantize_state(state, dtype)
    names = sorted(k[: -len(LORA_A)] for k in state if k.endswith(LORA_A))
    if not names:
        return dict(state)
    path = Path(directory) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise checkpoint.CheckpointError(f"{directory}: holds LoRA weights ({names[0]}{LORA_A}, ...) but {path} does "
                                         f"not give their r and lora_alpha ({exc})") from None
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    out = {k: v for k, v in state.items() if not k.endswith((LORA_A, LORA_B))}
    for name in names:
        base, b = out.pop(f"{name}.base_layer.weight", None), state.get(name + LORA_B)
        if base is None or b is None:
            raise checkpoint.CheckpointError(f"{directory}: LoRA layer {name!r} lacks its base_layer.weight or "
                                             f"lora_B.weight")
        delta = b.float() @ state[name + LORA_A].float()
        out[f"{name}.weight"] = (base.float() + delta * scale).to(base.dtype)
        if f"{name}.base_layer.bias" in out:
            out[f"{name}.bias"] = out.pop(f"{name}.base_layer.bias")
    return out


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


def _few(names: list[str], n: int = 6, *, quote: bool = True) -> str:
    shown = ", ".join(repr(x) if quote else x for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
