"""KV caches behind the specs KVCache / PagedKVCache Protocols: a contiguous static cache and a paged one."""

from attn.cache.block_pool import BlockPool, block_hash
from attn.cache.paged import PagedKVCache, SequenceError
from attn.cache.static import StaticKVCache

__all__ = ["BlockPool", "PagedKVCache", "SequenceError", "StaticKVCache", "block_hash"]
