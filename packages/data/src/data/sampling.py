"""Which token windows form the samples, in which order, and which rank and worker gets which batch.

Pure numpy, no per-token Python. Legend: N samples, T seq_len, B batch_size, W world size (ranks), K workers.

- Packed (``pack=True``): each shard is cut into non-overlapping windows of T+1 tokens with stride T (the last
  token of a window is the first of the next, so every token is a target exactly once); windows never cross
  shards. Unpacked: each document is cut into chunks of at most T+1 tokens with stride T; short ones are padded.
- Epoch ``e`` visits the samples in ``permutation(N)`` drawn from ``PCG64([seed, e])`` (identity without
  shuffling). Global step k takes positions ``[k*W*B, (k+1)*W*B)`` of that order and rank r the r-th block of B.
  A final partial global step is dropped (``drop_last``), or split ``rem[r::W]`` so the union over ranks is
  every sample exactly once. Worker w of K on a rank yields that rank's batches j with ``j % K == w`` counting
  from the resume point, which is the order in which ``torch.utils.data.DataLoader`` collects from its workers:
  the batch sequence is the same for any K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.shards import ShardSet


class SampleSpace:
    """Maps global sample ids to ``(shard, start, length)``; lengths are T+1 except short unpacked chunks."""

    def __init__(self, shards: ShardSet, seq_len: int, *, pack: bool) -> None:
        self.seq_len = seq_len
        self.pack = pack
        T = seq_len
        if pack:
            counts = np.array([max(s.num_tokens - 1, 0) // T for s in shards.shards], dtype=np.int64)
            self._cum = np.concatenate([[0], np.cumsum(counts)])
            self.num_samples = int(self._cum[-1])
        else:
            shard_ids, starts, lengths = [], [], []
            for i, s in enumerate(shards.shards):
                off = np.asarray(s.offsets, dtype=np.int64)
                lens = np.diff(off)
                n_chunks = np.where(lens >= 2, (lens - 2) // T + 1, 0)  # ceil((L-1)/T): each chunk has >= 1 target
                doc = np.repeat(np.arange(len(lens)), n_chunks)
                k = np.arange(int(n_chunks.sum())) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
                st = off[:-1][doc] + k * T
                starts.append(st)
                lengths.append(np.minimum(T + 1, off[1:][doc] - st))
                shard_ids.append(np.full(len(st), i, dtype=np.int32))
            self._shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
            self._start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
            self._len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
            self.num_samples = len(self._start)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard index, token start, length) of each global sample id."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.pack:
            shard = np.searchsorted(self._cum, ids, side="right") - 1
            start = (ids - self._cum[shard]) * self.seq_len
            return shard, start, np.full(len(ids), self.seq_len + 1, dtype=np.int64)
        return self._shard[ids], self._start[ids], self._len[ids]


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """The epoch order and the rank/worker split (see the module docstring)."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int
    seed: int
    shuffle: bool
    drop_last: bool
    subset: np.ndarray | None = None  # sorted allowed sample ids (train/val split), None = all

    @property
    def size(self) -> int:
        return self.num_samples if self.subset is None else len(self.subset)

    def batches_per_epoch(self) -> int:
        G = self.world_size * self.batch_size
        full, rem = divmod(self.size, G)
        if self.drop_last or rem == 0:
            return full
        return full + (1 if len(range(self.rank, rem, self.world_size)) else 0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        n = self.size
        order = (np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n) if self.shuffle
                 else np.arange(n, dtype=np.int64))
        return order if self.subset is None else self.subset[order]

    def batch_ids(self, order: np.ndarray, j: int) -> np.ndarray:
        """Global sample ids of this rank's j-th batch of the epoch whose order is ``order``."""
        B, W, r = self.batch_size, self.world_size, self.rank
        G = W * B
        full = self.size // G
        if j < full:
            return order[j * G + r * B: j * G + (r + 1) * B]
        return order[full * G:][r::W]


def split_subset(num_samples: int, val_fraction: float, split: str) -> np.ndarray | None:
    """Sample ids of the ``train`` or ``val`` split: a fixed pseudo-random ``val_fraction`` of ids is val.

    The split depends only on ``num_samples`` (not on the shuffle seed), so train and val never swap samples.
    """
    if split == "all" or val_fraction <= 0:
        if split == "val":
            return np.zeros(0, dtype=np.int64)
        return None
    n_val = max(1, int(round(num_samples * val_fraction)))
    is_val = np.zeros(num_samples, dtype=bool)
    is_val[np.random.Generator(np.random.PCG64([0x5EED, num_samples])).permutation(num_samples)[:n_val]] = True
    return np.flatnonzero(is_val if split == "val" else ~is_val).astype(np.int64)
