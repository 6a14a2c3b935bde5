"""Build or load models, tokenizers and a generator by name through the plugin resolver.

eval imports only specs, tensor and kernel (ARCHITECTURE.md), so everything else arrives through entry points:
models from ``lmstack.models`` (``transformer``: ``from_pretrained(dir)`` or ``cls(cfg)`` for a preset), tokenizers
from ``lmstack.tokenizers`` (``auto``), and the decode loop from ``lmstack.generators`` (``default``, registered by
lmstack-serve as ``serve.generate:generate``). A missing plugin fails with the list of installed names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from specs.errors import ConfigError, PluginError
from specs.plugins import resolve
from specs.presets import PRESETS, preset
from specs.sources import local_path

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} was asked for but CUDA is not available on this machine")
    return device


def pick_dtype(dtype: str) -> torch.dtype | None:
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(name: str | Path, *, device: str = "auto", dtype: str = "auto", seed: int = 0) -> Any:
    """A checkpoint directory (lmstack or Hugging Face), or a preset name built with random weights (``seed``)."""
    dev = pick_device(device)
    path = local_path(name)  # a directory, or a source such as registry:NAME@production
    if path.is_dir():
        arch = "transformer"
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            doc = json.loads(cfg_file.read_text())
            arch = doc.get("arch", "transformer") if isinstance(doc, dict) else "transformer"
        model = resolve("lmstack.models", arch).from_pretrained(path, dtype=pick_dtype(dtype), device=dev)
        return model.eval()
    if str(name) in PRESETS:
        cfg = preset(str(name))
        torch.manual_seed(seed)
        model = resolve("lmstack.models", cfg.arch)(cfg).to(dev)
        tdtype = pick_dtype(dtype)
        return (model.to(tdtype) if tdtype is not None else model).eval()
    raise ConfigError("model", f"{name!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")


def merge_adapter(model: Any, directory: str | Path) -> int:
    """Merge the LoRA adapter in ``directory`` (PEFT's adapter_config.json + adapter_model.safetensors) into
    ``model``'s weights through the ``lmstack.adapters`` plugin ``lora`` (lmstack-compress); returns the number of
    layers changed."""
    try:
        plugin = resolve("lmstack.adapters", "lora")
    except PluginError as exc:
        raise ConfigError("peft", f"an adapter needs lmstack-compress (pip install lmstack-compress): {exc}") from None
    with torch.no_grad():
        return plugin.merge_from(model, directory)


def load_tokenizer(spec: str | Path) -> Any:
    return resolve("lmstack.tokenizers", "auto")(str(spec))


def generator(name: str = "default") -> Any:
    """The decode function ``generate(model, input_ids, max_new_tokens, **sampling)`` registered under ``name``."""
    return resolve("lmstack.generators", name)
