"""Shard format: round trip, dtype rule, rolling, atomic writes, byte identity, integrity errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_docs

from data.build import build_shards
from data.manifest import read_manifest
from data.shards import ShardIntegrityError, ShardSet, ShardWriter
from data.tokenizer import ByteTokenizer
from specs.errors import ConfigError


def _docs(n: int = 50, vocab: int = 259, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, 400))) for _ in range(n)]


def test_round_trip_and_nanogpt_layout(tmp_path: Path) -> None:
    docs = _docs()
    d = write_docs(tmp_path / "s", docs, vocab_size=259, shard_size_tokens=2000)
    s = ShardSet.open(d, verify=True)
    assert s.dtype == np.dtype("<u2") and s.manifest["dtype"] == "uint16"
    assert [list(x) for x in s.documents()] == [list(x) for x in docs]
    assert s.num_tokens == sum(map(len, docs)) and s.num_documents == len(docs)
    # nanoGPT reads train.bin as raw uint16: the shard files are exactly that, in order.
    raw = np.concatenate([np.fromfile(d / e["path"], dtype=np.uint16) for e in s.manifest["shards"]])
    assert np.array_equal(raw, np.concatenate(docs))
    for e in s.manifest["shards"]:
        # rolls before the limit would be exceeded: every shard <= 2000 tokens (no document exceeds it here)
        assert 0 < e["num_tokens"] <= 2000
        idx = np.fromfile(d / e["index"]["path"], dtype="<u8")
        assert idx[0] == 0 and idx[-1] == e["num_tokens"] and len(idx) == e["num_documents"] + 1
    assert len(s) > 1


def test_dtype_by_vocab(tmp_path: Path) -> None:
    assert read_manifest(write_docs(tmp_path / "a", [np.array([65535])], vocab_size=65536))["dtype"] == "uint16"
    d = write_docs(tmp_path / "b", [np.array([0, 70000, 5])], vocab_size=70001)
    s = ShardSet.open(d)
    assert s.manifest["dtype"] == "uint32" and list(next(iter(s.documents()))) == [0, 70000, 5]
    with pytest.raises(ConfigError, match=r"ids must lie in \[0, 259\)"):
        write_docs(tmp_path / "c", [np.array([1, 259])], vocab_size=259)


def test_oversized_document_gets_its_own_shard(tmp_path: Path) -> None:
    d = write_docs(tmp_path / "s", [np.ones(10, int), np.ones(50, int), np.ones(10, int)], vocab_size=259,
                   shard_size_tokens=20)
    assert [e["num_tokens"] for e in read_manifest(d)["shards"]] == [10, 50, 10]


def test_atomic_abort_and_no_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), ShardWriter(out, vocab_size=259) as w:
        w.add_document([1, 2, 3])
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no temp left
    write_docs(out, [np.array([1, 2])], vocab_size=259)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        ShardWriter(out, vocab_size=259)
    with ShardWriter(out, vocab_size=259, overwrite=True) as w:
        w.add_document([7, 8, 9])
    assert list(next(iter(ShardSet.open(out).documents()))) == [7, 8, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ConfigError, match="no tokens"), ShardWriter(tmp_path / "empty", vocab_size=259):
        pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_is_never_replaced_by_a_shard_directory(tmp_path: Path, overwrite: bool) -> None:
    # overwrite=True once renamed the file aside, committed, and left .afile.old-PID behind (rmtree of a file).
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"afile exists and is not a directory; expected a directory path"):
        ShardWriter(tmp_path / "afile", vocab_size=259, overwrite=overwrite)
    with pytest.raises(ConfigError, match=r"cannot create .*afile/sub: .*afile is not a directory"):
        ShardWriter(tmp_path / "afile" / "sub", vocab_size=259, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").is_file()


def test_byte_identical(tmp_path: Path) -> None:
    texts = ["hello world\n", "second document, naïve", "x" * 5000]
    a = build_shards(texts, tmp_path / "a", ByteTokenizer(), shard_size_tokens=1000)
    b = build_shards(texts, tmp_path / "b", ByteTokenizer(), shard_size_tokens=1000)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    m = read_manifest(a)
    assert m["tokenizer"]["fingerprint"] == ByteTokenizer().fingerprint() and m["separators"] == {"bos": False,
                                                                                                "eos": True}


@pytest.mark.parametrize("texts", ["just a string", b"some bytes"])
def test_a_single_text_is_refused_and_nothing_written(tmp_path: Path, texts) -> None:
    # A str used to be read one character per document: 13 one-character documents, no error.
    with pytest.raises(ConfigError, match=r"texts: expected an iterable of documents .* e\.g\. \[text\]"):
        build_shards(texts, tmp_path / "out", ByteTokenizer())
    with pytest.raises(ConfigError, match="document 1 is of type int, expected a str"):
        build_shards(["a", 3], tmp_path / "out", ByteTokenizer())
    assert list(tmp_path.iterdir()) == []  # no output directory, no staging directory left


def test_tokenizer_spec_or_none(tmp_path: Path) -> None:
    out = build_shards(["hello", "world"], tmp_path / "spec", "byte")  # loaded with load_tokenizer
    assert read_manifest(out)["tokenizer"]["fingerprint"] == ByteTokenizer().fingerprint()
    with pytest.raises(ConfigError, match="tokenizer: expected a Tokenizer or a spec .* got None"):
        build_shards(["a"], tmp_path / "none", None)
    with pytest.raises(ConfigError, match=r"'bpe:400' names a tokenizer to train.*load_tokenizer\('bpe:400'"):
        build_shards(["a"], tmp_path / "bpe", "bpe:400")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec"]


def test_truncated_shard_is_detected(tmp_path: Path) -> None:
    d = write_docs(tmp_path / "s", _docs(), vocab_size=259, shard_size_tokens=3000)
    victim = d / read_manifest(d)["shards"][1]["path"]
    victim.write_bytes(victim.read_bytes()[:-2])
    with pytest.raises(ShardIntegrityError, match=rf"{victim.name}.*truncated"):
        ShardSet.open(d)


def test_corrupted_shard_is_detected_by_hash(tmp_path: Path) -> None:
    d = write_docs(tmp_path / "s", _docs(), vocab_size=259, shard_size_tokens=3000)
    victim = d / read_manifest(d)["shards"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    s = ShardSet.open(d)  # same length: only the hash can tell
    with pytest.raises(ShardIntegrityError, match=rf"{victim.name}: sha256"):
        s.verify()
    with pytest.raises(ShardIntegrityError, match=victim.name):
        ShardSet.open(d, verify=True)


def test_bad_index_and_manifest(tmp_path: Path) -> None:
    d = write_docs(tmp_path / "s", _docs(5), vocab_size=259)
    m = read_manifest(d)
    idx = d / m["shards"][0]["index"]["path"]
    bad = np.fromfile(idx, dtype="<u8")
    bad[2], bad[3] = bad[3], bad[2]
    bad.tofile(idx)
    with pytest.raises(ShardIntegrityError, match="offsets must rise"):
        ShardSet.open(d)
    del m["shards"][0]["sha256"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=r"shards\[0\]\.sha256: required"):
        ShardSet.open(d)
    with pytest.raises(ConfigError, match="has no manifest.json"):
        ShardSet.open(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        ShardSet.open(tmp_path / "nope")
