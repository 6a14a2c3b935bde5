"""A fixed-shape decode batch over a paged KV cache, so a continuous-batching decode step can be a CUDA graph.

A :class:`~attn.cache.paged.PagedKVCache` decodes rows of different lengths with a host-built plan per step: new
shapes whenever a sequence joins or grows past a block, so every step is launched kernel by kernel from Python.
:class:`PagedDecodeView` is ``rows`` static device buffers -- lengths (R,), block table (R, NB) and the slot each
row's new token goes to (R,) -- over the same pools. ``load(seq_ids)`` fills them from the cache's host state
before a step (one copy per buffer); the model then runs with ``fixed_shape`` semantics (device lengths, no host
reads), the new keys/values go to their slots with one ``index_copy_`` per layer and attention reads the pools
through the block table (``kernel`` op ``decode_attention``). A graph captured once per row count replays for any
set of at most ``rows`` sequences (vLLM's CUDA-graph decode, padded to captured batch sizes). Rows past the live ones
are padding: they point at a scratch block the caller reserved, write their garbage there and read only it.

The host state advances when the caller calls ``commit()`` after the step (``advance`` is a no-op, so nothing in
the captured step touches the host).

Shape legend: R rows, NB blocks per row, KVH key/value heads, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch

from attn.cache._checks import check_layer, check_positive
from kernel.reference import split_combine_in_kernel
from specs.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from attn.cache.paged import PagedKVCache


class PagedDecodeView:
    """``rows`` fixed decode rows over ``cache`` for sequences of up to ``max_seq_len`` tokens."""

    fixed_shape = True
    # A decode step may leave the write of its new token to the attention kernel (``decode_attention(k_new=...)``
    # writes slot ``seq_lens[b]`` of ``read(layer)``'s buffers, exactly what ``append`` would) instead of appending.
    kernel_writes = True

    def __init__(self, cache: PagedKVCache, rows: int, max_seq_len: int, scratch_block: int):
        check_positive(rows=rows, max_seq_len=max_seq_len)
        if not 0 <= scratch_block < cache.num_blocks:
            raise ConfigError("scratch_block", f"{scratch_block} is not a block of this {cache.num_blocks}-block pool")
        self.cache, self.rows, self.scratch_block = cache, rows, scratch_block
        self.n_layers, self.block_size, self.device = cache.n_layers, cache.block_size, cache.device
        self.blocks_per_row = -(-max_seq_len // cache.block_size)
        self.max_seq_len = self.blocks_per_row * cache.block_size
        self.lens = torch.zeros(rows, dtype=torch.int64, device=self.device)
        self.block_table = torch.zeros(rows, self.blocks_per_row, dtype=torch.int32, device=self.device)
        self.write_slots = torch.zeros(rows, dtype=torch.int64, device=self.device)
        # the decode kernel's workspace under $LMSTACK_SPLIT_COMBINE=last: it then combines its slot splits in one
        # kernel with these (left zeroed)
        self.split_counters = (torch.zeros(rows * cache.n_kv_heads, dtype=torch.int32, device=self.device)
                               if split_combine_in_kernel() else None)
        self._live: list[Hashable] = []
        self.load([])

    @property
    def seq_lens(self) -> torch.Tensor:
        """(R,) int64 on the device: tokens held per row before this step (0 for padding rows)."""
        return self.lens

    @property
    def live(self) -> list[Hashable]:
        return list(self._live)

    def load(self, seq_ids: Sequence[Hashable]) -> None:
        """Point rows 0..len(seq_ids)-1 at these sequences (each with room reserved for one more token); the rest
        become padding. Host -> device copies only; call before every step."""
        if len(seq_ids) > self.rows:
            raise ShapeError(f"{len(seq_ids)} sequences do not fit a decode view of {self.rows} rows")
        bs, nb = self.block_size, self.blocks_per_row
        lens, table, write = [0] * self.rows, [[self.scratch_block] + [0] * (nb - 1)] * self.rows, \
            [self.scratch_block * bs] * self.rows
        for r, s in enumerate(seq_ids):
            n, blocks = self.cache.seq_len(s), self.cache.block_table(s)
            if n + 1 > self.max_seq_len or len(blocks) * bs < n + 1:
                raise ShapeError(f"sequence {s!r}: {n} tokens + 1 needs room reserved in the cache and at most "
                                 f"{self.max_seq_len} slots in this view, has {len(blocks) * bs}")
            lens[r], table[r], write[r] = n, (blocks + [0] * nb)[:nb], blocks[n // bs] * bs + n % bs
        self.lens.copy_(torch.tensor(lens, dtype=torch.int64))
        self.block_table.copy_(torch.tensor(table, dtype=torch.int32))
        self.write_slots.copy_(torch.tensor(write, dtype=torch.int64))
        self._live = list(seq_ids)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (R, KVH, 1, Dh) at each row's slot; return layer ``layer``'s whole pools (slots, KVH, Dh)."""
        check_layer(layer, self.n_layers)
        if k.shape[0] != self.rows or k.shape[2] != 1 or v.shape != k.shape:
            raise ShapeError(f"a decode view appends one token for each of its {self.rows} rows: got k "
                             f"{tuple(k.shape)}, v {tuple(v.shape)}")
        kp, vp = self.cache.k_pool[layer], self.cache.v_pool[layer]
        kp.index_copy_(0, self.write_slots, k[:, :, 0].to(kp.dtype))
        vp.index_copy_(0, self.write_slots, v[:, :, 0].to(vp.dtype))
        return kp, vp

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_layer(layer, self.n_layers)
        return self.cache.k_pool[layer], self.cache.v_pool[layer]

    def advance(self, n_tokens: int) -> None:
        """Nothing on the device (graph-safe); the host lengths move in :meth:`commit`."""

    def commit(self) -> None:
        """Count the token each live row just wrote (host state of the cache)."""
        for s in self._live:
            self.cache.extend(s, 1)

    def evict(self, rows: Sequence[int]) -> None:
        raise ConfigError("evict", "a decode view holds no sequences of its own; free them in the paged cache")

    def reset(self) -> None:
        self.load([])
