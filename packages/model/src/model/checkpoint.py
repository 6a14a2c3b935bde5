"""Checkpoint directories: safetensors weights (sharded past a size), config.json, modelcard.json; atomic; no pickle.

Layout (the Hugging Face convention, so tools that read HF directories read ours):
  model.safetensors                          one file, or past ``max_shard_size``:
  model-00001-of-0000N.safetensors + model.safetensors.index.json   ({"metadata": {"total_size"}, "weight_map"})
  config.json                                lmstack ModelConfig with schema_version, or a transformers config
  modelcard.json                             specs.modelcard.ModelCard: sha256 and size of every file above
A directory is written whole into a temporary sibling and renamed into place; files of an existing directory that
are not weights or written here (a tokenizer, say) are carried over. Loading verifies the model card's hashes
(IntegrityError names the file), reads safetensors only (never pickle) and wraps every failure in a
:class:`CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from specs.errors import ConfigError, LmstackError
from specs.modelcard import LineageEntry, ModelCard

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
CARD = "modelcard.json"
# Weight files of any format we or transformers write: replaced, never carried over into a new save.
_STALE = re.compile(r"(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                    r"pytorch_model(-\d{5}-of-\d{5})?\.bin|pytorch_model\.bin\.index\.json)")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class CheckpointError(LmstackError):
    """A checkpoint directory or file is missing, unreadable or inconsistent."""


def parse_size(size: int | str) -> int:
    """``5_000_000``, ``"5GB"``, ``"500MiB"`` -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ConfigError("max_shard_size", f"must be > 0, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", str(size).upper())
    if not m:
        raise ConfigError("max_shard_size", f"expected bytes or a size like '2GB' / '500MiB', got {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` by rename.

    Files already in ``target`` that the new directory does not contain (and that are not stale weights) are
    carried over. On an error the temporary directory is removed and ``target`` is untouched. A target under a
    regular file, or the working directory or one of its parents (which cannot be renamed away), is refused with a
    CheckpointError before anything is created.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a directory")
    existing = next(p for p in (target.parent, *target.parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise CheckpointError(f"{target}: cannot create it, because {existing} is a file, not a directory; pass a "
                              "path whose parents are directories")
    cwd = Path.cwd().resolve()
    if target.resolve() in (cwd, *cwd.parents):
        raise CheckpointError(f"{target}: is the current working directory or one of its parents, which cannot be "
                              "replaced while in use; pass a subdirectory to write the checkpoint into (e.g. "
                              f"{str(target / 'checkpoint')!r})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            for item in target.iterdir():
                if not (tmp / item.name).exists() and not _STALE.fullmatch(item.name):
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _shards(state: Mapping[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in state-dict order; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def write_checkpoint(directory: str | os.PathLike[str], state: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                     *, name: str, max_shard_size: int | str = "5GB", lineage: tuple[LineageEntry, ...] = (),
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write weights, ``config`` as config.json and a model card, atomically; returns the directory."""
    max_bytes = parse_size(max_shard_size)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_directory(directory) as tmp:
        shards = _shards(tensors, max_bytes)
        files: list[str] = []
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS), metadata={"format": "pt"})
            files.append(WEIGHTS)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, fname))
                files.append(fname)
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            files.append(INDEX)
        (tmp / CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n", encoding="utf-8")
        files.append(CONFIG)
        card = ModelCard.for_files(name, tmp, files, config=dict(config), lineage=lineage,
                                   metadata=dict(metadata or {}))
        (tmp / CARD).write_text(card.to_json(), encoding="utf-8")
    return Path(directory)


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict (CheckpointError if missing or not JSON)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such checkpoint directory")
    path = d / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint directory needs config.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def verify_card(directory: str | os.PathLike[str], *, required: bool) -> ModelCard | None:
    """Check every file the model card lists (IntegrityError on a mismatch); None when there is no card."""
    path = Path(directory) / CARD
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing, so the weights cannot be verified (an lmstack checkpoint "
                                  "writes one beside its weights); re-save it with save_pretrained, or load it from "
                                  "Python with from_pretrained(..., verify=False) to skip the integrity checks")
        return None
    card = ModelCard.load(path)
    card.verify(directory)
    return card


def weight_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint (single file or the shards its index names)."""
    d = Path(directory)
    if (d / INDEX).is_file():
        try:
            index = json.loads((d / INDEX).read_text(encoding="utf-8"))
            names = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{d / INDEX}: malformed shard index: {exc}") from None
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise CheckpointError(f"{d / missing[0]}: listed in {INDEX} but missing")
        return [d / n for n in names]
    if (d / WEIGHTS).is_file():
        return [d / WEIGHTS]
    if any(d.glob("*.bin")) or any(d.glob("*.pt")):
        raise CheckpointError(f"{d}: only pickle weights (*.bin / *.pt) found; lmstack reads safetensors only "
                              "(convert with transformers' save_pretrained(safe_serialization=True))")
    raise CheckpointError(f"{d / WEIGHTS}: missing (no weights in this checkpoint directory)")


def read_weights(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint by name, loaded onto ``device``."""
    out: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for key in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    out[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file (truncated or corrupted?): {exc}") from None
    return out
