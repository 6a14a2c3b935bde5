"""lmstack corpus curation."""
