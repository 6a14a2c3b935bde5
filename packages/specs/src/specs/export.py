"""``from specs.export import ExportConfig`` as in the seed's export snippet."""

from specs.config import ExportConfig

__all__ = ["ExportConfig"]
