"""Vector search over L2-normalised embeddings with faiss (Johnson et al. 2017, arXiv:1702.08734).

Scores are inner products, so cosine similarity for normalised vectors. Kinds:
- ``flat``: exact search (``IndexFlatIP``), the right choice up to a few hundred thousand chunks;
- ``hnsw``: a navigable small-world graph (Malkov and Yashunin 2016, ``IndexHNSWFlat``; ``m`` links a node,
  ``ef_search`` candidates a query), approximate and fast at millions of vectors;
- ``ivf``: an inverted file over ``nlist`` k-means cells, ``nprobe`` of them searched a query (``IndexIVFFlat``).
The index file is faiss's own format (``faiss.write_index``), never pickle.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivf")


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"vectors must be a {want} float matrix, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinity")
    return x


class VectorIndex:
    """``VectorIndex.build(vectors_ND, kind="flat").search(queries_QD, k) -> [[(row, score), ...]]``."""

    def __init__(self, index: faiss.Index):
        self.index = index

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str = "flat", m: int = 32, ef_search: int = 64,
              nlist: int | None = None, nprobe: int = 8, seed: int = 0) -> VectorIndex:
        x = _as_matrix(vectors)
        n, d = x.shape
        if n == 0:
            raise ValueError("cannot build a vector index over no vectors")
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        elif kind == "ivf":
            cells = nlist or max(1, min(int(4 * n ** 0.5), n // 39 or 1))  # faiss wants ~39 points a centroid
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
            index.nprobe = min(nprobe, cells)
        else:
            raise ValueError(f"unknown vector index kind {kind!r}; valid: {', '.join(KINDS)}")
        index.add(x)
        return cls(index)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[int, float]]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = _as_matrix(queries, self.dim)
        scores, rows = self.index.search(q, min(k, len(self)))
        return [[(int(r), float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def vectors(self, rows: list[int]) -> np.ndarray:
        """The stored vectors of ``rows`` (len(rows), D) float32, exactly as added (every kind keeps them whole)."""
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()  # an inverted file finds a row's vector through its id map
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        return cls(faiss.read_index(str(path)))
