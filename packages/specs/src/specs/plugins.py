"""Resolve implementations by (entry-point group, name), lazily, listing valid names on a miss.

Packages register implementations in their pyproject.toml, e.g.::

    [project.entry-points."lmstack.models"]
    transformer = "model.lm:TransformerLM"

``resolve("lmstack.models", "transformer")`` imports and returns the object. Lookups are cached;
``resolve.cache_clear()`` resets them (tests). Extra in-process implementations can be passed as ``extra``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from specs.errors import PluginError, suggest

GROUPS = (
    "lmstack.models",
    "lmstack.tokenizers",
    "lmstack.datasets",
    "lmstack.kernels",
    "lmstack.viz_backends",
    "lmstack.exporters",
    "lmstack.callbacks",
    "lmstack.export_hooks",
    "lmstack.generators",
    "lmstack.decoders",
    "lmstack.quantizers",
    "lmstack.engines",
)


def selected(group: str, names: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """Resolve a config's hook list: None means every installed plugin of ``group``, () none."""
    chosen = available(group) if names is None else list(names)
    return [(n, resolve(group, n)) for n in chosen]


@functools.cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available(group: str) -> list[str]:
    """Sorted names registered in ``group``."""
    return sorted(_entry_points(group))


@functools.cache
def _load(group: str, name: str) -> Any:
    eps = _entry_points(group)
    if name not in eps:
        names = sorted(eps)
        raise PluginError(
            f"unknown {group.removeprefix('lmstack.')} {name!r}{suggest(name, names)}; "
            f"valid names: {', '.join(names) or '(none installed)'}"
        )
    try:
        return eps[name].load()
    except Exception as exc:  # an installed plugin that fails to import: say which one
        raise PluginError(f"{group} plugin {name!r} ({eps[name].value}) failed to load: {exc}") from exc


def resolve(group: str, name: str, extra: Mapping[str, Any] | None = None) -> Any:
    """The object registered as ``name`` in ``group`` (``extra`` wins over installed entry points)."""
    if extra and name in extra:
        return extra[name]
    try:
        return _load(group, name)
    except PluginError as exc:
        if extra:
            names = sorted({*available(group), *extra})
            raise PluginError(
                f"unknown {group.removeprefix('lmstack.')} {name!r}{suggest(name, names)}; "
                f"valid names: {', '.join(names)}"
            ) from None
        raise exc


def cache_clear() -> None:
    _entry_points.cache_clear()
    _load.cache_clear()


resolve.cache_clear = cache_clear  # type: ignore[attr-defined]
