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
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")
_BATCH = 4096
_PRIME = (1 << 31) - 1  # Mersenne prime: acc < 2**31 and base < 2**20, so acc * base + h < 2**64, no overflow
_BASE = 1_000_003
SCHEME = "affine32"  # shingles per update_batch: bounds the (n, num_perm) uint64 temporary


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Lower-cased word n-grams of ``text`` (the whole text as one shingle when it has fewer than n words)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of :func:`shingles`, computed without building the strings.

    Each word is hashed once (crc32); an n-gram's hash is a polynomial of its words' hashes modulo 2**31-1
    (Karp-Rabin). Equal n-grams get equal hashes; distinct ones collide with probability ~2**-31.
    """
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return np.array([zlib.crc32(" ".join(words).encode())], dtype=np.uint64) if words else np.zeros(0, np.uint64)
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
    for k in range(n):  # Horner's rule; every intermediate stays below 2**64
        acc = (acc * np.uint64(_BASE) + h[k:len(h) - n + 1 + k]) % np.uint64(_PRIME)
    return np.unique(acc)


def minhash(items: Iterable[bytes] | np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(num_perm,) MinHash signature with datasketch's ``affine32`` scheme.

    ``items`` are shingles (bytes, hashed with crc32) or an array of 32-bit shingle hashes (:func:`shingle_hashes`).
    """
    from datasketch import MinHash

    hashfunc = int if isinstance(items, np.ndarray) else zlib.crc32
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=hashfunc, scheme=SCHEME)
    items = list(items)
    for i in range(0, len(items), _BATCH):
        m.update_batch(items[i:i + _BATCH])
    return m.hashvalues


def exact_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NearDuplicateIndex:
    """``seen(key, signature)``: the key of an earlier near-duplicate, else None (and this one is remembered).

    Keys are only reported back; documents are indexed by arrival number, so repeated keys are fine.
    """

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sigs: list[Any] = []
        self._keys: list[str] = []

    def _wrap(self, signature: np.ndarray) -> Any:  # a datasketch LeanMinHash
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)

    def seen(self, key: str, signature: np.ndarray) -> str | None:
        """The key of an earlier near-duplicate, or None (and then this document is indexed)."""
        m = self._wrap(signature)
        for other in sorted(self._lsh.query(m)):  # candidates share a band; confirm with the estimate
            if m.jaccard(self._sigs[other]) >= self.threshold:
                return self._keys[other]
        self._lsh.insert(len(self._sigs), m)
        self._sigs.append(m)
        self._keys.append(key)
        return None
