"""Cache surgery that decoding strategies need, written against the specs KVCache protocol only.

Beam search reorders batch rows after every step (Hugging Face's ``Cache.reorder_cache``); speculative decoding
drops the keys and values of rejected draft tokens (``DynamicCache.crop``). The protocol has ``read``, ``reset``,
``append`` and ``advance``, which is enough for both: read every layer, select rows or slots, reset, write back and
commit. That costs one extra copy of the cache per call (Hugging Face's index_select also copies it once), and works
for any KVCache whose rows all hold the same number of tokens (left-padded batches, beams, single sequences).

Legend: B batch rows, KVH key/value heads, S cached tokens, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from specs.errors import ShapeError


def _uniform_len(cache: Any) -> int:
    lens = cache.seq_lens.tolist()
    if lens and any(n != lens[0] for n in lens):
        raise ShapeError(f"cache rows hold different numbers of tokens {lens}; rewriting needs equal lengths")
    return int(lens[0]) if lens else 0


def _rewrite(cache: Any, select: Any) -> None:
    """Replace each layer's (B, KVH, S, Dh) contents by ``select(k)``, ``select(v)`` (which may change B or S)."""
    kv = []
    for layer in range(cache.n_layers):
        k, v = cache.read(layer)
        kv.append((select(k).clone(), select(v).clone()))
    cache.reset()
    if kv[0][0].shape[2] == 0:
        return
    for layer, (k, v) in enumerate(kv):
        cache.append(layer, k, v)
    cache.advance(kv[0][0].shape[2])


def reorder_rows(cache: Any, rows: Sequence[int] | torch.Tensor) -> None:
    """Row b of the cache becomes old row ``rows[b]`` (beam search: each beam continues its parent)."""
    _uniform_len(cache)
    idx = torch.as_tensor(rows, dtype=torch.long)
    if torch.equal(idx.cpu(), torch.arange(len(idx))):
        return
    _rewrite(cache, lambda t: t.index_select(0, idx.to(t.device)))


def truncate(cache: Any, length: int) -> None:
    """Keep only the first ``length`` cached tokens of every row (speculative decoding's rejected drafts)."""
    current = _uniform_len(cache)
    if length > current:
        raise ShapeError(f"cannot truncate a cache holding {current} tokens to {length}")
    if length == current:
        return
    _rewrite(cache, lambda t: t[:, :, :length])
