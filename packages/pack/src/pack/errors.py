"""pack's error: an LmstackError, so ``lmstack`` prints it without a traceback and exits 2."""

from __future__ import annotations

from specs.errors import LmstackError


class PackError(LmstackError, RuntimeError):
    """A bundle, template, environment or bootstrap problem, naming what was wrong and what was expected."""
