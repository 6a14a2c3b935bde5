"""Deduplication: exact (sha256 of the normalised text) and near-duplicate (MinHash LSH over word 5-grams).

Near-duplicates follow Broder 1997 ("On the resemblance and containment of documents"): a document is the set
of its word n-gram shingles (n=5 as in Gopher, Rae et al. 2021, and FineWeb); MinHash signatures estimate the
Jaccard similarity of two sets, and LSH banding (``datasketch.MinHashLSH``) finds candidate pairs above a threshold
without comparing all pairs. A candidate is a duplicate only if its estimated Jaccard is at least the threshold.
The first occurrence (in input order) is kept, so the result is deterministic.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"\w+")
_BATCH = 4096
SCHEME = "affine32"  # shingles per update_batch: bounds the (n, num_perm) uint64 temporary


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Lower-cased word n-grams of ``text`` (the whole text as one shingle when it has fewer than n words)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def minhash(shingle_set: Iterable[bytes], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(num_perm,) MinHash signature: datasketch's ``affine32`` scheme over crc32 as the base 32-bit hash."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32, scheme=SCHEME)
    items = list(shingle_set)
    for i in range(0, len(items), _BATCH):
        m.update_batch(items[i:i + _BATCH])
    return m.hashvalues


def exact_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NearDuplicateIndex:
    """``seen(key, signature)``: True when an earlier document is a near-duplicate, else remember this one."""

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def _wrap(self, signature: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)

    def seen(self, key: str, signature: np.ndarray) -> str | None:
        """The key of an earlier near-duplicate, or None (and then this document is indexed)."""
        m = self._wrap(signature)
        for other in sorted(self._lsh.query(m)):
            if m.jaccard(self._sigs[other]) >= self.threshold:
                return other
        self._lsh.insert(key, m)
        self._sigs[key] = m
        return None

    @property
    def _sigs(self) -> dict:
        if not hasattr(self, "_sig_store"):
            self._sig_store: dict = {}
        return self._sig_store
