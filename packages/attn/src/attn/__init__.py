"""lmstack attn: one attention module for MHA/GQA/MQA, per-forward masks and positions, static and paged KV caches."""

__version__ = "0.1.0"
