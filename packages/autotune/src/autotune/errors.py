"""The errors autotune raises for bad input or state that is not a config document (those are ConfigErrors)."""

from __future__ import annotations

from specs.errors import LmstackError


class AutotuneError(LmstackError):
    """A study that cannot run or be read: its directory is in use, holds another study, or has no results yet."""
