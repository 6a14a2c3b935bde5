"""lmstack attn: one attention module for MHA/GQA/MQA, per-forward masks and positions, static and paged KV caches."""

from attn.attention import Attention
from attn.cache import PagedKVCache, StaticKVCache
from attn.context import AttentionContext, build_context
from attn.positions import ALiBi, RotaryEmbedding

__version__ = "0.9.0"

__all__ = ["ALiBi", "Attention", "AttentionContext", "PagedKVCache", "RotaryEmbedding", "StaticKVCache",
           "build_context"]
