"""Load a model and its tokenizer by name through the plugin resolver (serve never imports model or data).

The model class comes from the ``lmstack.models`` entry point named by the checkpoint's ``arch`` (``transformer``);
the tokenizer from ``lmstack.tokenizers``' ``auto`` loader, which reads the tokenizer saved in the checkpoint
directory (or any spec it accepts: ``byte``, a tokenizer.json path, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from specs.errors import ConfigError, PluginError
from specs.plugins import resolve

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else as given, once torch can parse it."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("serve.device", f"{device!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("serve.device", f"{device!r} was asked for but CUDA is not available on this machine")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype | None:
    """'auto' -> bf16 on a GPU that supports it, else the checkpoint's dtype (None)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return _DTYPES[dtype]


def model_arch(directory: Path) -> str:
    """The ``arch`` recorded in an lmstack checkpoint's config.json ('transformer' for Hugging Face directories)."""
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise ConfigError("model", f"{directory} has no config.json; expected an lmstack or Hugging Face checkpoint")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("model", f"{cfg_file} is not valid JSON: {exc}") from None
    return cfg.get("arch", "transformer") if isinstance(cfg, dict) else "transformer"


def load_model(directory: str | Path, *, device: str = "auto", dtype: str = "auto") -> Any:
    """``resolve("lmstack.models", arch).from_pretrained(directory)`` on the chosen device, in eval mode."""
    path = Path(directory)
    if not path.is_dir():
        raise ConfigError("model", f"{directory} is not a directory (expected a checkpoint directory)")
    dev = pick_device(device)
    cls = resolve("lmstack.models", model_arch(path))
    return cls.from_pretrained(path, dtype=pick_dtype(dtype, dev), device=dev).eval()


def adapters() -> Any:
    """The ``lmstack.adapters`` plugin ``lora`` (lmstack-compress), or a ConfigError saying to install it."""
    try:
        return resolve("lmstack.adapters", "lora")
    except PluginError as exc:
        raise ConfigError("adapter", f"serving an adapter needs lmstack-compress (pip install lmstack-compress): "
                          f"{exc}") from None


def check_adapter(directory: str | Path) -> None:
    """A ConfigError, before any model loads, unless ``directory`` holds a LoRA adapter the plugin can load."""
    adapters().check(directory)


def merge_adapter(model: Any, directory: str | Path) -> int:
    """Merge the LoRA adapter in ``directory`` (PEFT's files) into ``model``'s weights through the plugin;
    returns the number of layers changed."""
    with torch.no_grad():
        return adapters().merge_from(model, directory)


def load_tokenizer(spec: str | Path) -> Any:
    """``resolve("lmstack.tokenizers", "auto")(spec)``: the tokenizer in a checkpoint directory, or any spec."""
    return resolve("lmstack.tokenizers", "auto")(str(spec))
