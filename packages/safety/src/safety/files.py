"""The built-in policies and suites shipped as package data, loadable as ``builtin:NAME``."""

from __future__ import annotations

from importlib import resources

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
