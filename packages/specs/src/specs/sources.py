"""Model references besides local directories: ``SCHEME:REF``, resolved by the ``lmstack.sources`` plugin SCHEME to
a local directory before anything is loaded (lmstack-registry's ``registry:NAME@production``).

Every CLI that takes a checkpoint directory (``python -m serve --model``, ``python -m export --model``,
eval's ``load_model``) passes it through :func:`local_path` first. A path that exists is always itself; a string
``SCHEME:REF`` whose SCHEME is a Python identifier of more than one letter names a plugin (an unknown one is an
error listing the installed sources); anything else is a path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.errors import PluginError
from specs.plugins import available, resolve

GROUP = "lmstack.sources"


def split_source(ref: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(scheme, rest)`` when ``ref`` names a source rather than a path, else None."""
    text = os.fspath(ref)
    scheme, sep, rest = text.partition(":")
    if not sep or len(scheme) < 2 or not scheme.isidentifier() or Path(text).exists():
        return None
    return scheme, rest


def local_path(ref: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None) -> Path:
    """The local directory ``ref`` stands for: itself, or what its ``lmstack.sources`` plugin makes of it (the
    plugin is called with the part after the colon and returns a path; ``extra`` adds in-process sources)."""
    parts = split_source(ref)
    if parts is None:
        return Path(ref)
    scheme, rest = parts
    try:
        source = resolve(GROUP, scheme, extra)
    except PluginError as exc:
        installed = ", ".join(sorted({*available(GROUP), *(extra or {})})) or "none"
        raise PluginError(f"{os.fspath(ref)!r} is neither an existing path nor a model source ({exc}; installed "
                          f"sources: {installed}; lmstack-registry adds 'registry')") from None
    return Path(source(rest))


def source_name(ref: str | os.PathLike[str]) -> str:
    """A display name for ``ref``: a source's reference (``tiny@production``), or a path's last part."""
    parts = split_source(ref)
    return parts[1] if parts is not None else Path(ref).resolve().name
