"""The shard manifest (``manifest.json``): schema, validation and the token dtype rule.

See ``packages/data/FORMAT.md`` for the full on-disk format. The manifest is canonical JSON (sorted keys,
two-space indent, trailing newline) and holds no timestamps, so the same input gives byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from specs.errors import ConfigError

FORMAT = "lmstack.shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
INDEX_DTYPE = np.dtype("<u8")


def dtype_for_vocab(vocab_size: int) -> str:
    """'uint16' when every id fits (vocab_size <= 65536), else 'uint32'."""
    if vocab_size <= 0:
        raise ConfigError("vocab_size", f"must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise ConfigError("vocab_size", f"must be <= 2**32 for uint32 shards, got {vocab_size}")
    return "uint16" if vocab_size <= 2**16 else "uint32"


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


_SHARD_KEYS = {"path": str, "sha256": str, "bytes": int, "num_tokens": int, "num_documents": int, "index": dict}
_INDEX_KEYS = {"path": str, "sha256": str, "bytes": int}
_TOP_KEYS = {"format": str, "format_version": int, "dtype": str, "vocab_size": int, "num_tokens": int,
             "num_documents": int, "shards": list, "tokenizer": dict, "sources": list}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Load and validate ``directory/manifest.json``; ConfigError names the file and the offending key."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else "has no manifest.json (not a shard directory)"
        raise ConfigError("data.path", f"{directory} {what}; build shards with `python -m corpus.cli build`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), f"not valid JSON: {exc}") from None
    _check(m, _TOP_KEYS, str(path))
    if m["format"] != FORMAT:
        raise ConfigError(f"{path}: format", f"expected {FORMAT!r}, got {m['format']!r}")
    if m["format_version"] != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version", f"this reader knows version {FORMAT_VERSION}, "
                          f"got {m['format_version']}")
    if m["dtype"] not in DTYPES:
        raise ConfigError(f"{path}: dtype", f"expected one of {sorted(DTYPES)}, got {m['dtype']!r}")
    for i, s in enumerate(m["shards"]):
        _check(s, _SHARD_KEYS, f"{path}: shards[{i}]")
        _check(s["index"], _INDEX_KEYS, f"{path}: shards[{i}].index")
        for key in ("path",):
            if Path(s[key]).is_absolute() or ".." in Path(s[key]).parts:
                raise ConfigError(f"{path}: shards[{i}].{key}", f"must be a relative path inside the directory, "
                                  f"got {s[key]!r}")
    if sum(s["num_tokens"] for s in m["shards"]) != m["num_tokens"]:
        raise ConfigError(f"{path}: num_tokens", "does not equal the sum over shards")
    return m


def _check(obj: Any, keys: Mapping[str, type], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise ConfigError(where, f"expected an object, got {type(obj).__name__}")
    for key, tp in keys.items():
        if key not in obj:
            raise ConfigError(f"{where}.{key}", "required")
        if not isinstance(obj[key], tp) or (tp is int and isinstance(obj[key], bool)):
            raise ConfigError(f"{where}.{key}", f"expected {tp.__name__}, got {type(obj[key]).__name__}")


def tokenizer_entry(tokenizer: Any, *, path: str | None = None) -> dict[str, Any]:
    """The manifest's ``tokenizer`` section for a Tokenizer object."""
    return {"spec": str(getattr(tokenizer, "spec", type(tokenizer).__name__)), "fingerprint": tokenizer.fingerprint(),
            "vocab_size": int(tokenizer.vocab_size), "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id, "path": path}
