"""Argument checks the KV caches share (one wording for every cache's errors)."""

from __future__ import annotations

from specs.errors import ConfigError


def check_positive(**dims: int) -> None:
    """Every named size must be > 0: ``check_positive(n_layers=2, head_dim=0)`` names ``cache.head_dim``."""
    for name, value in dims.items():
        if value <= 0:
            raise ConfigError(f"cache.{name}", f"must be > 0, got {value}")


def check_layer(layer: int, n_layers: int) -> None:
    if not 0 <= layer < n_layers:
        raise ConfigError("layer", f"layer {layer} out of range for a cache of {n_layers} layers")
