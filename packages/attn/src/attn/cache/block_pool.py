"""The block allocator behind the paged KV cache: ref counts, prefix hashes and LRU reuse of cached blocks.

Follows vLLM's automatic prefix caching (Kwon et al. 2023, "Efficient Memory Management for Large Language Model
Serving with PagedAttention", arXiv:2309.06180, and vLLM's v1 KVCacheManager): a full block of prompt tokens is
named by a hash chained over every token before it, so two prompts that share a prefix share its blocks. A block
whose last user frees it keeps its contents and hash while it sits in an LRU list; allocation takes never-cached
free blocks first, then evicts the least recently freed cached block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence

from specs.errors import CacheFullError

ROOT_HASH = b""


def block_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """sha256 over the parent block's hash and this block's token ids (a chain, so equal hash = equal prefix)."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class BlockPool:
    """``num_blocks`` block ids with reference counts and an optional prefix-hash index."""

    def __init__(self, num_blocks: int, *, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.reset()

    def reset(self) -> None:
        """Forget every reference and cached prefix."""
        num_blocks = self.num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # hold nothing worth keeping
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but cached; oldest first
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}

    def forget_prefixes(self) -> int:
        """Unregister every cached prefix (vLLM's ``reset_prefix_cache``): blocks in use stay with their sequences,
        unreferenced cached blocks become plain free blocks, and no later prompt matches what was cached before
        (for KV computed by weights that have since changed). Returns how many prefixes were forgotten."""
        n = len(self._hash_of)
        self._free.extend(self._evictable)
        self._evictable.clear()
        self._hash_of.clear()
        self._block_of.clear()
        return n

    def num_free(self) -> int:
        """Blocks an allocation may take: never-cached free blocks plus unreferenced cached ones."""
        return len(self._free) + len(self._evictable)

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def num_cached(self) -> int:
        """Blocks that hold a registered prefix (in use or evictable)."""
        return len(self._hash_of)

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks (ref count 1 each), all or none; CacheFullError if fewer are free."""
        if n > self.num_free():
            raise CacheFullError(f"need {n} KV blocks but only {self.num_free()} of {self.num_blocks} are free")
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self._refs[block] = 1
            out.append(block)
        return out

    def lookup(self, h: bytes) -> int | None:
        """The block holding the prefix named ``h``, if cached."""
        return self._block_of.get(h) if self.prefix_caching else None

    def acquire(self, block: int) -> None:
        """Add a user to a cached block (a prefix hit); it leaves the LRU list if it was unreferenced."""
        if self._refs[block] == 0:
            self._evictable.pop(block, None)
        self._refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one user from each block; unreferenced blocks become free (cached ones keep their prefix).

        Released in reverse so a sequence's tail blocks are evicted before its head (the head is the prefix
        most likely to be shared again).
        """
        for block in reversed(blocks):
            assert self._refs[block] > 0, f"block {block} released more often than acquired"
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    def register(self, block: int, h: bytes) -> bool:
        """Name a full block by its prefix hash so later prompts can share it; False if already known."""
        if not self.prefix_caching or h in self._block_of or block in self._hash_of:
            return False
        self._block_of[h] = block
        self._hash_of[block] = h
        return True
