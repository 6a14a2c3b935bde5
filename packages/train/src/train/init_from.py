"""Starting a run from a saved model's weights (``train.init_from``): fine-tuning and continued pre-training.

``train.init_from: DIR`` names an lmstack model directory (``save_pretrained``, or a training checkpoint's) or a
Hugging Face Llama / Mistral / GPT-2 one, or a model source (``registry:NAME@production`` with lmstack-registry:
:mod:`specs.sources`). The model class (the ``lmstack.models`` plugin ``model.arch``) reads
it through its ``read_config`` and ``from_pretrained(dir, dtype, config=...)``, as TransformerLM has them, so
train never imports the model package. What a config leaves out is taken from the directory:

- the ``model`` section: the directory's config, under any field the config does set (only
  ``ModelConfig.RUN_FIELDS``, such as dropout, attn_impl or a longer max_seq_len for RoPE, may differ from the
  directory's: anything else is a ConfigError naming each field before any data or weights are read);
- ``data.tokenizer``: the directory itself where it holds a tokenizer (a Hugging Face model's tokenizer.json or
  tokenizer.model, or the one a training checkpoint saved), so the data is tokenized as the model was trained.

The Trainer copies the weights into its model at construction (``train.run``'s and a notebook's alike), read in
fp32 and cast to the model's dtype (``train.precision`` / ``dist.precision`` decide the compute dtype), and every
checkpoint's metadata.json lists the directory among its ``parents`` (kind ``model``, with the sha256 of its
weights), which governance's lineage, receipt and card show. A resumed run then takes its checkpoint's weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from specs.config import RunConfig
from specs.errors import ConfigError, LmstackError
from specs.modelcard import sha256_file
from specs.plugins import resolve
from specs.sources import local_path, split_source

FIELD = "train.init_from"
# files that make a directory a tokenizer (data.tokenizer.base.MODEL_FILES, and the config a byte tokenizer saves)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer_config.json")


def fill_from_directory(doc: Mapping[str, Any], overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``doc`` (a RunConfig document, before validation) with the model section and ``data.tokenizer`` completed
    from ``train.init_from``'s directory where the document and ``overrides`` leave them out; unchanged when
    there is no ``train.init_from``."""
    out = dict(doc)
    train = out.get("train") if isinstance(out.get("train"), Mapping) else {}
    directory = train.get("init_from")
    for key, raw in overrides:
        if key == FIELD:
            directory = raw
    if not directory:
        return out
    path = check_directory(directory)
    model = out.get("model") if isinstance(out.get("model"), Mapping) else {}
    arch = next((raw for key, raw in overrides if key == "model.arch"), model.get("arch", "transformer"))
    saved = model_class(arch).read_config(path).to_dict()
    saved.pop("schema_version", None)
    out["model"] = {**saved, **model}
    data = dict(out.get("data")) if isinstance(out.get("data"), Mapping) else {}
    if "tokenizer" not in data and not any(key == "data.tokenizer" for key, _ in overrides) and any(
            (path / name).is_file() for name in TOKENIZER_FILES):
        data["tokenizer"] = str(path)
        out["data"] = data
    return out


def check_directory(directory: str) -> Path:
    """``directory`` as a Path (a model source such as ``registry:NAME@production`` as its local directory), or a
    ConfigError saying what ``train.init_from`` expects."""
    try:
        path = local_path(directory).expanduser()
    except LmstackError as exc:
        raise ConfigError(FIELD, str(exc)) from None
    if not path.is_dir() or not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else ("is not a directory" if not path.is_dir()
                                                           else "has no config.json")
        raise ConfigError(FIELD, f"{directory} {what}; expected a model directory: an lmstack checkpoint "
                          "(save_pretrained, or runs/<run>/checkpoints/step_N) or a Hugging Face Llama, Mistral or "
                          "GPT-2 directory with config.json and safetensors weights")
    return path


def model_class(arch: str) -> Any:
    """The ``lmstack.models`` class ``arch``, which must read checkpoints (``read_config``, ``from_pretrained``)."""
    cls = resolve("lmstack.models", arch)
    if not all(callable(getattr(cls, name, None)) for name in ("read_config", "from_pretrained")):
        raise ConfigError(FIELD, f"model.arch {arch!r} ({getattr(cls, '__name__', cls)}) cannot load a checkpoint: "
                          "it has no read_config / from_pretrained (TransformerLM has both)")
    return cls


def check(cfg: RunConfig) -> None:
    """Before any work: ``train.init_from`` is a model directory and ``cfg.model`` describes its network."""
    if cfg.train.init_from is None:
        return
    path = check_directory(cfg.train.init_from)
    model_class(cfg.model.arch).read_config(path).check_same_network(cfg.model, str(path))


def load_into(model: Any, directory: str) -> None:
    """Copy the weights of the model directory ``directory`` into ``model`` (whose class reads it through
    ``from_pretrained(dir, dtype, config=model.config)``, and whose config must describe the same network)."""
    cls = type(model)
    if not callable(getattr(cls, "from_pretrained", None)) or getattr(model, "config", None) is None:
        raise ConfigError(FIELD, f"the model ({cls.__name__}) cannot load a checkpoint: it has no from_pretrained "
                          "or no config (TransformerLM has both)")
    saved = cls.from_pretrained(check_directory(directory), dtype="fp32", config=model.config)
    with torch.no_grad():
        model.load_state_dict(saved.state_dict())


def parent(directory: str) -> dict[str, Any]:
    """metadata.json's ``parents`` entry for the directory a run started from: kind ``model``, its path, and the
    sha256 of its weights (of ``model.safetensors``; for sharded weights, of the lines "<sha256>  <file>" of
    every ``*.safetensors`` file in name order)."""
    path = check_directory(directory)
    entry = {"kind": "model", "path": str(directory) if split_source(directory) is None else str(path)}
    if split_source(directory) is not None:
        entry["source"] = str(directory)  # e.g. registry:NAME@production, which path is the checkout of
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return {**entry, "sha256": None}
    if len(files) == 1:
        return {**entry, "sha256": sha256_file(files[0])}
    lines = "".join(f"{sha256_file(f)}  {f.name}\n" for f in files)
    return {**entry, "sha256": hashlib.sha256(lines.encode()).hexdigest()}
