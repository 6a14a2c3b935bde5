"""lmstack corpus curation: ``python -m corpus.cli build`` (see corpus.pipeline for the stages)."""

__version__ = "0.1.2"
