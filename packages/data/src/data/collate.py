"""Turn located samples into a ``specs.batch.Batch`` of int64 torch tensors, shapes (B, T).

Vectorised: one memmap slice copy per row, document boundaries from the shard's offset index with
``searchsorted``, never a per-token Python loop.

Packed rows hold T+1 consecutive tokens: ``input_ids = row[:-1]``, ``labels = row[1:]``. ``document_ids`` number
the documents inside each row from 0. With ``doc_mask`` (no attention across documents) ``positions`` restart
at 0 at every document start and a label whose target lies in the next document is -100 (the model cannot see
that document); otherwise positions are ``0..T-1`` and every label is kept, as in GPT-2/nanoGPT packing.
Unpacked rows hold one document chunk of n <= T+1 tokens: its first n-1 as inputs (each has a target), then
``pad_id`` with ``attention_mask`` 0 and ``labels`` -100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data.shards import Shard
from specs.batch import IGNORE_INDEX, Batch


def packed_batch(shards: Sequence[Shard], shard_ids: np.ndarray, starts: np.ndarray, seq_len: int, *,
                 doc_mask: bool) -> Batch:
    T, B = seq_len, len(starts)
    rows = np.empty((B, T + 1), dtype=np.int64)  # (B, T+1)
    mark = np.zeros((B, T + 1), dtype=bool)  # True where a new document starts inside the row
    any_boundary = False
    for b in range(B):
        shard = shards[int(shard_ids[b])]
        st = int(starts[b])
        rows[b] = shard.tokens[st:st + T + 1]
        off = shard.offsets
        lo = int(np.searchsorted(off, np.uint64(st), side="right"))
        hi = int(np.searchsorted(off, np.uint64(st + T + 1), side="left"))
        if hi > lo:
            mark[b, (off[lo:hi] - np.uint64(st)).astype(np.int64)] = True
            any_boundary = True
    doc = np.cumsum(mark, axis=1, dtype=np.int64)  # (B, T+1) document number inside the row
    input_ids = torch.from_numpy(rows[:, :-1].copy())
    labels_np = rows[:, 1:].copy()
    t = np.arange(T, dtype=np.int64)
    if doc_mask and any_boundary:
        labels_np[mark[:, 1:]] = IGNORE_INDEX
        last_start = np.maximum.accumulate(np.where(mark[:, :T], t, 0), axis=1)
        positions = torch.from_numpy(t - last_start)
    else:
        positions = torch.from_numpy(t).expand(B, T).contiguous()
    return Batch(input_ids=input_ids, labels=torch.from_numpy(labels_np),
                 attention_mask=torch.ones((B, T), dtype=torch.int64), positions=positions,
                 document_ids=torch.from_numpy(doc[:, :-1].copy()))


def padded_batch(shards: Sequence[Shard], shard_ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 seq_len: int, *, pad_id: int) -> Batch:
    T, B = seq_len, len(starts)
    rows = np.full((B, T + 1), pad_id, dtype=np.int64)  # (B, T+1)
    for b in range(B):
        st, n = int(starts[b]), int(lengths[b])
        rows[b, :n] = shards[int(shard_ids[b])].tokens[st:st + n]
    valid = np.arange(T)[None, :] < (np.asarray(lengths, dtype=np.int64)[:, None] - 1)  # (B, T)
    labels = np.where(valid, rows[:, 1:], IGNORE_INDEX)
    inputs = np.where(valid, rows[:, :-1], pad_id)  # a chunk's last token is only a target
    return Batch(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(labels),
                 attention_mask=torch.from_numpy(valid.astype(np.int64)),
                 positions=torch.arange(T, dtype=torch.int64).expand(B, T).contiguous())
