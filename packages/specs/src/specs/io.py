"""Load and dump configs as YAML or JSON, with schema versions, migrations and dotted overrides.

``load_config("cfgs/llm_small.yaml", overrides=["--dist.strategy", "FSDP"])`` reads the file, upgrades
an older ``schema_version`` through :mod:`specs.migrations`, applies the overrides typed by the schema and
builds a frozen :class:`~specs.config.RunConfig`. ``dump_config`` stamps ``schema_version`` and writes atomically.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from specs.config import RunConfig
from specs.errors import ConfigError
from specs.migrations import SCHEMA_VERSION, migrate
from specs.schema import ConfigBase, apply_overrides, parse_override_args

C = TypeVar("C", bound=ConfigBase)


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML or JSON file into a mapping; anything else is a ConfigError naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("", f"{p} is a directory; expected a YAML or JSON config file")
    if not p.is_file():
        raise ConfigError("", f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"{p} is not UTF-8 text; expected a YAML or JSON config file") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError("", f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{p} must hold a mapping of sections (model:, train:, ...), got a {type(data).__name__}")
    return dict(data)


def config_from_dict(
    data: Mapping[str, Any],
    cls: type[C] = RunConfig,  # type: ignore[assignment]
    overrides: Sequence[str] | Sequence[tuple[str, str]] = (),
) -> C:
    """Migrate ``data`` to the current schema, apply overrides, build ``cls``."""
    doc = migrate(cls.kind, data)
    pairs = parse_override_args(overrides) if overrides and isinstance(overrides[0], str) else list(overrides)
    doc = apply_overrides(doc, cls, pairs)  # type: ignore[arg-type]
    return cls.from_dict(doc)


def load_config(
    path: str | os.PathLike[str],
    cls: type[C] = RunConfig,  # type: ignore[assignment]
    overrides: Sequence[str] | Sequence[tuple[str, str]] = (),
) -> C:
    """Read a YAML/JSON config file; see :func:`config_from_dict`."""
    return config_from_dict(read_document(path), cls, overrides)


def config_to_dict(cfg: ConfigBase) -> dict[str, Any]:
    """``cfg.to_dict()`` with ``schema_version`` stamped first."""
    return {"schema_version": SCHEMA_VERSION, **cfg.to_dict()}


def dumps_config(cfg: ConfigBase, fmt: str = "yaml") -> str:
    doc = config_to_dict(cfg)
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False)
    raise ConfigError("", f"unknown format {fmt!r}; expected 'yaml' or 'json'")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory (fsync, then rename), so readers see
    the old file or the new one, never half of one. The temp file is created 0600; ``mode``, when given, is
    applied before the rename. A ``path`` that is a directory, or whose directory cannot be created or written,
    is a ConfigError naming it, and nothing is left behind."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("", f"cannot write {p}: it is a directory; expected a file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise ConfigError("", f"cannot write {p}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def dump_config(cfg: ConfigBase, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML (or JSON for a .json path), schema_version stamped, atomically."""
    fmt = "json" if str(path).endswith(".json") else "yaml"
    return atomic_write_text(path, dumps_config(cfg, fmt))


def open_sqlite(path: str | os.PathLike[str], *, timeout_s: float = 60.0, autocommit: bool = False
                ) -> sqlite3.Connection:
    """An SQLite connection in WAL mode (readers do not block the writer, several processes share the file) that
    waits up to ``timeout_s`` for other processes' locks; ``autocommit`` leaves transactions to explicit BEGINs.

    The switch to WAL needs the database to itself, and SQLite answers "database is locked" at once, without its
    busy timeout, while another process holds a lock: processes that open a new database together race there. So
    the switch is retried until ``timeout_s``."""
    conn = sqlite3.connect(path, timeout=timeout_s, **({"isolation_level": None} if autocommit else {}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.005 + 0.02 * random.random())
