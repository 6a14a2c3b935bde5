"""Errors export raises: all :class:`specs.errors.LmstackError`, so CLIs print them without a traceback.

Bad configuration is a :class:`specs.errors.ConfigError` (field path + what was expected); the classes here cover
what goes wrong after the config is accepted.
"""

from __future__ import annotations

from specs.errors import LmstackError


class ExportError(LmstackError, RuntimeError):
    """The model could not be exported, or the outdir could not be written; nothing was published."""


class MissingDependencyError(ExportError):
    """A requested target or quantization needs a package or a device that is not available here.

    ``missing`` lists each missing piece in words (``"the 'tensorrt' Python package"``).
    """

    def __init__(self, what: str, missing: list[str]):
        self.what = what
        self.missing = list(missing)
        super().__init__(f"{what} needs " + "; ".join(self.missing))


class ParityError(ExportError):
    """The exported artifact disagrees with the PyTorch model beyond the tolerance; nothing was published."""


class HookError(ExportError):
    """A post-export hook failed. The artifacts it ran on are complete and validated; its own outputs may be missing."""
