"""File helpers: atomic text writes (a temporary file in the destination's directory, then ``os.replace``, so a
reader never sees half a report or policy), and the built-in policies and suites shipped as package data."""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from specs.errors import ConfigError


def builtin_names(folder: str, suffix: str) -> list[str]:
    """The names of the package-data files ``safety/<folder>/*<suffix>``, loadable as ``builtin:NAME``."""
    return sorted(p.name.removesuffix(suffix) for p in resources.files("safety").joinpath(folder).iterdir()
                  if p.name.endswith(suffix))


def builtin_text(spec: str, folder: str, suffix: str, what: str) -> tuple[str, str]:
    """(name, text) of the built-in ``spec`` (``builtin:NAME``); ConfigError listing the valid ones."""
    key = spec.removeprefix("builtin:")
    names = builtin_names(folder, suffix)
    if key not in names:
        raise ConfigError("", f"unknown built-in {what} {spec!r}; expected one of "
                              f"{', '.join('builtin:' + n for n in names)}")
    return key, resources.files("safety").joinpath(folder, f"{key}{suffix}").read_text(encoding="utf-8")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
