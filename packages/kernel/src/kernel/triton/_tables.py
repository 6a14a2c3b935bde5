"""Tile tables measured per card: ``{card name: {shape key: [ints]}}`` in JSON, shipped beside a kernel module and
updated by a table of one's own named in an environment variable (the skinny matmul's and the gemv kernel's)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from specs.errors import ConfigError

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "int8"}
_cache: dict[tuple[str, str], dict] = {}


def tile_key(N: int, K: int, weight_dtype: torch.dtype) -> str:
    """The key of a (N, K) weight in a tile table, e.g. ``"bf16 2560x2048"``."""
    return f"{_DTYPE_NAMES.get(weight_dtype, str(weight_dtype))} {N}x{K}"


def load_table(shipped: Path, env: str, path: str | os.PathLike | None, valid: Callable[[object], bool],
               form: str) -> dict[str, dict[str, list[int]]]:
    """The table at ``shipped`` (when it exists), updated by the one at ``path`` or ``$env``; read once per path.
    ``valid(entry)`` checks one entry; ``form`` says what a valid one is, for the error."""
    path = path or os.environ.get(env)
    key = (str(shipped), str(path))
    if key not in _cache:
        table = _read(shipped, env, valid, form) if shipped.exists() else {}
        if path:
            for card, entries in _read(Path(path), env, valid, form).items():
                table.setdefault(card, {}).update(entries)
        _cache[key] = table
    return _cache[key]


def _read(path: Path, env: str, valid: Callable[[object], bool], form: str) -> dict[str, dict[str, list[int]]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(env, f"cannot read a tile table from {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(env, f"{path}: expected a JSON object {{card name: {{shape key: tiles}}}}, got "
                               f"{type(raw).__name__}")
    table = {}
    for card, entries in raw.items():
        if card.startswith("_"):  # "_meta": how and when it was measured
            continue
        if not isinstance(entries, dict):
            raise ConfigError(env, f"{path}: {card!r} should map shape keys such as 'bf16 2560x2048' to tiles, got "
                                   f"{type(entries).__name__}")
        for key, cfg in entries.items():
            if not valid(cfg):
                raise ConfigError(env, f"{path}: {card!r} {key!r} should be {form}, got {cfg!r}")
        table[card] = dict(entries)
    return table
