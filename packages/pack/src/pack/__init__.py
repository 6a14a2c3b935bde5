"""lmstack's one command line, project templates, config validation, environment checks and model bundles."""

from pack.errors import PackError

__version__ = "0.1.1"
__all__ = ["PackError"]
