"""The error viz raises for bad values, tags, log files or run directories (an LmstackError, so CLIs exit 2)."""

from __future__ import annotations

from specs.errors import LmstackError


class VizError(LmstackError, ValueError):
    """A value that is not a number, a tag with a newline, a log file in a foreign format, a run with no logs."""
