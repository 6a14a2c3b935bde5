"""Loader: labels/positions/document ids against a per-token reference, rank x worker split, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_docs

from data.loader import build_dataloader
from specs.batch import IGNORE_INDEX, Batch
from specs.errors import ConfigError


def _rows(batches: list[Batch]) -> list[int]:
    return [int(x) for b in batches for x in b.input_ids[:, 0]]


def _all(dl) -> list[Batch]:
    return list(dl)


def test_packed_batch_against_reference(positional_shards) -> None:
    d, stream, docs = positional_shards
    starts = {int(doc[0]) for doc in docs}  # stream positions where documents begin
    for doc_mask in (False, True):
        dl = build_dataloader(d, batch_size=4, seq_len=16, doc_mask=doc_mask, drop_last=False)
        for b in dl:
            assert b.input_ids.shape == (len(b.input_ids), 16) and b.input_ids.dtype == torch.int64
            for row in range(b.shape[0]):
                ids = b.input_ids[row].tolist()
                p0 = ids[0]
                assert ids == list(range(p0, p0 + 16))  # a contiguous window of the stream
                doc_ids, positions, labels = [], [], []
                doc, pos = 0, 0
                for t in range(16):  # per-token reference
                    p = p0 + t
                    if t > 0 and p in starts:
                        doc, pos = doc + 1, 0
                    doc_ids.append(doc)
                    positions.append(pos if doc_mask else t)
                    pos += 1
                    crosses = (p + 1) in starts
                    labels.append(IGNORE_INDEX if doc_mask and crosses else p + 1)
                assert b.document_ids[row].tolist() == doc_ids
                assert b.positions[row].tolist() == positions
                assert b.labels[row].tolist() == labels
                assert b.attention_mask[row].tolist() == [1] * 16


def test_each_sample_once_per_epoch_and_reshuffled(positional_shards) -> None:
    d, _, _ = positional_shards
    dl = build_dataloader(d, batch_size=4, seq_len=16, drop_last=False, epochs=2, seed=3)
    n = len(dl)
    batches = _all(dl)
    e0, e1 = _rows(batches[:n]), _rows(batches[n:])
    assert len(e0) == len(set(e0)) == dl.space.num_samples and set(e0) == set(e1) and e0 != e1
    again = _rows(_all(build_dataloader(d, batch_size=4, seq_len=16, drop_last=False, epochs=2, seed=3)))
    assert again == e0 + e1
    assert _rows(_all(build_dataloader(d, batch_size=4, seq_len=16, drop_last=False, seed=4))) != e0
    ordered = _rows(_all(build_dataloader(d, batch_size=4, seq_len=16, drop_last=False, shuffle=False)))
    assert ordered == sorted(ordered)


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_times_workers_partition_the_samples(positional_shards, drop_last: bool) -> None:
    d, _, _ = positional_shards
    W, B = 3, 5
    seen: dict[tuple[int, int], list[int]] = {}
    for rank in range(W):
        for workers in (0, 2):
            dl = build_dataloader(d, batch_size=B, seq_len=16, rank=rank, world_size=W, num_workers=workers,
                                  drop_last=drop_last, seed=1)
            seen[rank, workers] = _rows(_all(dl))
        assert seen[rank, 0] == seen[rank, 2]  # workers change nothing about the sequence
    per_rank = [seen[r, 0] for r in range(W)]
    flat = [x for rows in per_rank for x in rows]
    assert len(flat) == len(set(flat))  # pairwise disjoint
    total = build_dataloader(d, batch_size=1, seq_len=16, drop_last=False).space.num_samples
    if drop_last:
        assert len({len(r) for r in per_rank}) == 1 and total - len(flat) < W * B
    else:
        assert len(flat) == total  # no gap
    # Inside one rank, worker shards are disjoint too: worker w yields batches w, w+K, ...
    dl = build_dataloader(d, batch_size=B, seq_len=16, rank=1, world_size=W, seed=1, drop_last=drop_last)
    from data.loader import _EpochStream

    stream = _EpochStream(dl, 0, 0)
    order = dl.schedule.epoch_order(0)
    by_worker = [[j for j in range(len(dl)) if j % 2 == w] for w in range(2)]
    ids = [set(np.concatenate([dl.schedule.batch_ids(order, j) for j in js]).tolist()) for js in by_worker]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == len(seen[1, 0])
    assert stream.schedule is dl.schedule


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(positional_shards, workers: int) -> None:
    d, _, _ = positional_shards
    kw = dict(batch_size=3, seq_len=16, seed=7, epochs=2, num_workers=workers, doc_mask=True)
    full = _all(build_dataloader(d, **kw))
    per_epoch = len(build_dataloader(d, **kw))
    for cut in (1, per_epoch - 1, per_epoch + 2):
        dl = build_dataloader(d, **kw)
        it = iter(dl)
        head = [next(it) for _ in range(cut)]
        state = json.loads(json.dumps(dl.state_dict()))  # JSON-safe, as a checkpoint stores it
        del it
        resumed = build_dataloader(d, **kw)
        resumed.load_state_dict(state)
        tail = _all(resumed)
        assert len(head) + len(tail) == len(full)
        for got, want in zip(head + tail, full):
            for k, v in want.as_dict().items():
                assert torch.equal(got.as_dict()[k], v), (cut, k)


def test_state_mismatch_and_new_pass(positional_shards) -> None:
    d, _, _ = positional_shards
    dl = build_dataloader(d, batch_size=3, seq_len=16, drop_last=False)
    other = build_dataloader(d, batch_size=4, seq_len=16, drop_last=False)
    with pytest.raises(ConfigError, match="batch_size"):
        other.load_state_dict(dl.state_dict())
    first, second = _rows(_all(dl)), _rows(_all(dl))  # a second pass is the next epoch: new order
    assert sorted(first) == sorted(second) and first != second



def test_bad_state_is_refused_by_field(positional_shards) -> None:
    # batches_done=-5 served other batches, 10**9 served none, end_epoch=-5 was ignored, epoch=-5 was numpy's error.
    d, _, _ = positional_shards
    dl = build_dataloader(d, batch_size=3, seq_len=16, epochs=2)
    n, state = len(dl), dl.state_dict()
    for key, value, match in [
        ("batches_done", -5, rf"an integer in \[0, {n}\] \(this loader has {n} batches per epoch\), got -5"),
        ("batches_done", n + 1, rf"in \[0, {n}\]"), ("batches_done", 10**9, rf"in \[0, {n}\]"),
        ("batches_done", "3", "got '3'"), ("epoch", -5, "an integer >= 0, got -5"), ("epoch", 1.5, "got 1.5"),
        ("epoch", True, "got True"), ("end_epoch", -5, "an integer >= the state's epoch"), ("end_epoch", "2", "'2'"),
    ]:
        with pytest.raises(ConfigError, match=rf"data\.state\.{key}: expected .*{match}"):
            dl.load_state_dict({**state, key: value})
    with pytest.raises(ConfigError, match=r"end_epoch: expected None \(stream forever\) or an integer >= the "
                       r"state's epoch \(1\), got 0"):
        dl.load_state_dict({**state, "epoch": 1, "end_epoch": 0})
    for value in (None, [], "state"):
        with pytest.raises(ConfigError, match="data.state: expected the dict from ShardLoader.state_dict()"):
            dl.load_state_dict(value)
    assert dl.state_dict() == state  # a refused state changes nothing
    dl.load_state_dict({**state, "batches_done": n})  # the epoch fully served: the next batch opens epoch 1
    assert len(_all(dl)) == n and dl.epoch == 2
    with pytest.raises(ConfigError, match="epoch: expected an integer >= 0"):
        dl.set_epoch(-1)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(num_workers=1, prefetch_factor=0), r"data\.prefetch_factor: expected None .* integer >= 1 .*got 0"),
    (dict(num_workers=1, prefetch_factor=2.5), "data.prefetch_factor: expected None"),
    (dict(pin_memory="no"), "data.pin_memory: expected True or False"),
    (dict(seed=-1), "data.seed: expected an integer >= 0, got -1"),
])
def test_dataloader_options_checked_up_front(positional_shards, kw, match) -> None:
    d, _, _ = positional_shards
    with pytest.raises(ConfigError, match=match):
        build_dataloader(d, batch_size=2, seq_len=16, **kw)


def test_unpacked_rows(tmp_path: Path) -> None:
    docs = [np.arange(1, 1 + n) for n in (5, 40, 17, 1, 33)]
    d = write_docs(tmp_path / "u", docs, vocab_size=259, tokenizer={"spec": "t", "fingerprint": "x", "pad_id": 258})
    dl = build_dataloader(d, batch_size=2, seq_len=16, pack=False, shuffle=False, drop_last=False)
    rows = []
    for b in dl:
        assert b.document_ids is None
        for r in range(b.shape[0]):
            n = int(b.attention_mask[r].sum())
            ids, labels = b.input_ids[r].tolist(), b.labels[r].tolist()
            assert ids[n:] == [258] * (16 - n) and labels[n:] == [IGNORE_INDEX] * (16 - n)
            assert labels[:n] == [x + 1 for x in ids[:n]]  # docs are 1..n, so the next token is id + 1
            rows.append(ids[:n] + [labels[n - 1]])
    # chunks with stride 16 cover every document except the 1-token one (it has no target)
    want = []
    for doc in docs:
        want += [doc[i:i + 17].tolist() for i in range(0, len(doc) - 1, 16)]
    assert rows == want


def test_val_split_and_env_rank(positional_shards, monkeypatch: pytest.MonkeyPatch) -> None:
    d, _, _ = positional_shards
    kw = dict(batch_size=2, seq_len=16, drop_last=False, val_fraction=0.2)
    train = set(_rows(_all(build_dataloader(d, split="train", **kw))))
    val = set(_rows(_all(build_dataloader(d, split="val", **kw))))
    assert not train & val and len(train | val) == build_dataloader(d, 1, 16).space.num_samples
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dl = build_dataloader(d, batch_size=2, seq_len=16)
    assert (dl.schedule.rank, dl.schedule.world_size) == (1, 2)


def test_errors(positional_shards, tmp_path: Path) -> None:
    d, _, _ = positional_shards
    with pytest.raises(ConfigError, match="too few for one batch"):
        build_dataloader(d, batch_size=64, seq_len=1024)
    with pytest.raises(ConfigError, match="is not the tokenizer"):
        build_dataloader(d, batch_size=2, seq_len=16, tokenizer="byte")
    with pytest.raises(ConfigError, match="seq_len"):
        build_dataloader(d, batch_size=2, seq_len=0)
    with pytest.raises(ConfigError, match="both rank and world_size"):
        build_dataloader(d, batch_size=2, seq_len=16, rank=0)
    with pytest.raises(ConfigError, match="does not exist"):
        build_dataloader(tmp_path / "missing")


def test_embedded_builds_once(tmp_path: Path) -> None:
    kw = dict(batch_size=2, seq_len=64, cache_dir=tmp_path / "cache", embedded_budget_bytes=200_000)
    dl = build_dataloader("embedded", **kw)
    manifest = dl.shards.directory / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    again = build_dataloader("embedded", **kw)
    assert again.shards.directory == dl.shards.directory and manifest.stat().st_mtime_ns == mtime
    assert dl.shards.tokenizer["spec"] == "byte" and dl.shards.manifest["sources"][0]["license"] == "PSF-2.0"
    b = next(iter(dl))
    text = dl.load_tokenizer().decode(b.input_ids[0].tolist())
    assert len(text) > 0
    dl.shards.verify()
