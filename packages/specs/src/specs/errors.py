"""The one exception family lmstack raises for bad user input.

Every user-facing error is a :class:`LmstackError`. Config problems are :class:`ConfigError`
(also a ``ValueError``) and always name the field path (``model.d_model``) and what was expected.
CLIs catch ``LmstackError``, print its message without a traceback and exit with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmstackError(Exception):
    """Base class of all errors lmstack raises for bad input or environment."""


class ConfigError(LmstackError, ValueError):
    """A config, override or schema problem. ``path`` is the dotted field path, or '' for the whole document."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across process pools
        return (type(self), (self.path, self.message))


class ShapeError(LmstackError, ValueError):
    """A tensor whose shape or dtype disagrees with its TensorSpec."""


class PluginError(LmstackError, LookupError):
    """An unknown plugin name, or a plugin that failed to load."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class CacheFullError(LmstackError, RuntimeError):
    """A KV cache has no room for the requested tokens (too few free blocks or past max_seq_len)."""
