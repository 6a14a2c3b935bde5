"""An on-disk embedding cache: rebuilding an index after a few documents change re-embeds only those passages.

SQLite (stdlib) keyed by (embedder fingerprint, kind, sha256 of the text); vectors are stored as raw float32 bytes,
so reading one back is ``np.frombuffer`` and nothing is ever unpickled. WAL mode lets several readers share the file
while one process writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.chunk import text_digest
from rag.embed import Embedder
from specs.io import open_sqlite

_SCHEMA = """CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, kind, digest))"""


class EmbeddingCache:
    """``EmbeddingCache(path).get(fingerprint, kind, texts)`` -> the cached rows, None where missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = open_sqlite(self.path)
        self.db.execute(_SCHEMA)
        self.db.commit()

    def get(self, fingerprint: str, kind: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        found: dict[str, np.ndarray] = {}
        digests = [text_digest(t) for t in texts]
        for i in range(0, len(digests), 500):  # SQLite's bound-parameter limit
            part = digests[i:i + 500]
            rows = self.db.execute(
                f"SELECT digest, dim, vector FROM embeddings WHERE fingerprint = ? AND kind = ? "
                f"AND digest IN ({','.join('?' * len(part))})", (fingerprint, kind, *part))
            for digest, dim, blob in rows:
                found[digest] = np.frombuffer(blob, dtype=np.float32, count=dim)
        return [found.get(d) for d in digests]

    def put(self, fingerprint: str, kind: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                [(fingerprint, kind, text_digest(t), vecs.shape[1], v.tobytes()) for t, v in zip(texts, vecs)])

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class CachedEmbedder:
    """Wraps an embedder: cached texts are read back, the rest embedded in one call and stored."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache):
        self.inner, self.cache = embedder, cache
        self.spec, self.fingerprint, self.dim = embedder.spec, embedder.fingerprint, embedder.dim
        self.hits = self.misses = 0

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        rows = self.cache.get(self.fingerprint, kind, texts)
        todo = sorted({t for t, r in zip(texts, rows) if r is None})
        missing = sum(r is None for r in rows)
        self.hits, self.misses = self.hits + len(rows) - missing, self.misses + missing
        if todo:
            fresh = self.inner.embed(todo, kind=kind)
            self.cache.put(self.fingerprint, kind, todo, fresh)
            by_text = dict(zip(todo, fresh))
            rows = [by_text[t] if r is None else r for t, r in zip(texts, rows)]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
