"""lmstack data plane."""
