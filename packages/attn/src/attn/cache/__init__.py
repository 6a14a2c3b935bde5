"""KV caches behind the specs KVCache / PagedKVCache Protocols: a contiguous static cache, a paged one, and a
fixed-shape static cache for CUDA graphs / torch.compile."""

from attn.cache.block_pool import BlockPool, block_hash
from attn.cache.decode_view import PagedDecodeView
from attn.cache.fixed import FixedKVCache
from attn.cache.paged import PagedKVCache, SequenceError
from attn.cache.static import StaticKVCache

__all__ = ["BlockPool", "FixedKVCache", "PagedDecodeView", "PagedKVCache", "SequenceError", "StaticKVCache",
           "block_hash"]
