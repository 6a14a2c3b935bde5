"""Fixtures: a registry with a controllable clock, and artifact trees shaped like lmstack checkpoints."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from registry import Registry


class Clock:
    """A UTC clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, days: float = 0.0, seconds: float = 1.0) -> None:
        self.now += timedelta(days=days, seconds=seconds)


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def checkpoint(root: Path, seed: int = 0, shared: bytes = b"tokenizer " * 100) -> Path:
    """A checkpoint directory: two weight shards + index, config, model card, a nested tokenizer file."""
    shard = lambda i: bytes((seed * 7 + i + j) % 256 for j in range(3000))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    return write_tree(root, {
        "model-00001-of-00002.safetensors": shard(1), "model-00002-of-00002.safetensors": shard(2),
        "model.safetensors.index.json": json.dumps(index), "config.json": json.dumps({"d_model": 64, "seed": seed}),
        "modelcard.json": json.dumps({"version": seed}), "tokenizer/tokenizer.json": shared,
    })


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(tmp_path, clock):
    with Registry(tmp_path / "reg", clock=clock) as r:
        yield r


def blob_count(reg: Registry) -> int:
    return sum(1 for _ in reg.blobs.blobs())
