"""Shared fixtures: small shard directories whose token values identify their position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.shards import ShardWriter


def write_docs(outdir: Path, docs: list[np.ndarray], *, vocab_size: int, shard_size_tokens: int = 1 << 20,
               tokenizer: dict | None = None) -> Path:
    with ShardWriter(outdir, vocab_size=vocab_size, shard_size_tokens=shard_size_tokens,
                     tokenizer=tokenizer or {"spec": "test", "fingerprint": "0" * 64, "pad_id": None}) as w:
        for d in docs:
            w.add_document(d)
    return outdir


@pytest.fixture
def positional_shards(tmp_path: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """Shards whose token at global stream position p is p (uint32), so a row's first id names its sample.

    Returns (dir, per-shard concatenated tokens as one array, documents)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=120)
    pos = 0
    docs = []
    for n in lengths:
        docs.append(np.arange(pos, pos + n, dtype=np.int64))
        pos += n
    d = write_docs(tmp_path / "pos", docs, vocab_size=1 << 20, shard_size_tokens=1500)
    return d, np.arange(pos), docs
