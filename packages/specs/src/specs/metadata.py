"""Training metadata: the ``metadata.json`` written beside each checkpoint, read by governance.

It is the hand-off between train (which knows the run) and governance (receipts, lineage, model cards),
so both sides agree on this shape::

    {
      "metadata_version": 1,
      "run": "name", "created": "2026-11-28T05:00:00Z", "step": 1000,
      "config": {...RunConfig dict...},
      "model": {"arch": "transformer", "params": 124000000, "config_sha256": "..."},
      "data": {"manifest": "path/manifest.json", "manifest_sha256": "...",
               "shards": [{"path": "...", "sha256": "...", "tokens": 123}],
               "sources": [{"name": "...", "license": "MIT", "sha256": "..."}]},
      "tokenizer": {"spec": "bpe:8000", "sha256": "..."},
      "checkpoint": {"path": "runs/x/step_1000", "files": {"model.safetensors": "sha256hex"}},
      "parents": [{"kind": "checkpoint", "path": "...", "sha256": "..."}],
      "artifacts": [{"path": "artifacts/model.onnx", "sha256": "..."}],
      "metrics": {"loss": 2.3},
      "git": {"commit": "abc123", "dirty": false},
      "environment": {"python": "3.11.7", "torch": "2.13.0", "cuda": null, "platform": "..."},
      "command": ["torchrun", "-m", "train.run", "..."]
    }

Only ``metadata_version`` and ``run`` are required; every other section is optional but, when present,
must have the shape above. :func:`validate_metadata` names the first offending key path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.errors import ConfigError

METADATA_VERSION = 1

_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "run": str,
    "created": str,
    "step": int,
    "config": dict,
    "model": dict,
    "data": dict,
    "tokenizer": dict,
    "checkpoint": dict,
    "parents": list,
    "artifacts": list,
    "metrics": dict,
    "git": dict,
    "environment": dict,
    "command": list,
}
_LIST_ITEMS = {"parents": ("kind", "path"), "artifacts": ("path",)}
_DATA_LISTS = {"shards": ("path", "sha256"), "sources": ("name",)}


def validate_metadata(data: Any, where: str = "metadata") -> dict[str, Any]:
    """Check the shape of a metadata document; return it as a dict or raise ConfigError naming the path."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a JSON object, got {type(data).__name__}")
    d = dict(data)
    version = d.get("metadata_version")
    if version != METADATA_VERSION:
        raise ConfigError(f"{where}.metadata_version", f"expected {METADATA_VERSION}, got {version!r}")
    if "run" not in d:
        raise ConfigError(f"{where}.run", "required (the run's name)")
    for key, tp in _SECTIONS.items():
        if key in d and d[key] is not None and not isinstance(d[key], tp):
            raise ConfigError(f"{where}.{key}", f"expected {getattr(tp, '__name__', tp)}, got {type(d[key]).__name__}")
    for key, required in _LIST_ITEMS.items():
        for i, item in enumerate(d.get(key) or []):
            _need(item, required, f"{where}.{key}[{i}]")
    for key, required in _DATA_LISTS.items():
        for i, item in enumerate((d.get("data") or {}).get(key) or []):
            _need(item, required, f"{where}.data.{key}[{i}]")
    return d


def _need(item: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(item, Mapping):
        raise ConfigError(where, f"expected an object, got {type(item).__name__}")
    for k in keys:
        if k not in item:
            raise ConfigError(f"{where}.{k}", "required")


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("metadata", f"file not found: {p}")
    try:
        return validate_metadata(json.loads(p.read_text(encoding="utf-8")), str(p))
    except json.JSONDecodeError as exc:
        raise ConfigError(str(p), f"not valid JSON: {exc}") from None
