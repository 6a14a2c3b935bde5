"""Registering, reading back and checking versions: round trips, dedup, refs, corruption, canonical manifests."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import blob_count, checkpoint, write_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import FileEntry, IntegrityError, NotFoundError, Registry, RegistryError
from registry.manifest import build_manifest, canonical


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_directory_and_file(reg, tmp_path):
    src = checkpoint(tmp_path / "ck")
    write_tree(src, {"deep/er/still/x.bin": os.urandom(2_500_000)})  # spans several 1 MiB copy blocks
    v = reg.register("llama", src, metadata={"eval": {"ppl": 11.5}}, tags=["a", "b", "a"])
    assert (v.version, v.kind, v.tags, v.stage, v.reused) == (1, "directory", ("a", "b"), "none", False)
    assert {f.path for f in v.files} == set(tree(src))
    for f in v.files:  # the manifest's digests are those of the source files, computed independently here
        data = (src / f.path).read_bytes()
        assert (f.sha256, f.size) == (hashlib.sha256(data).hexdigest(), len(data))
    out = reg.checkout("llama", 1, tmp_path / "out" / "ck")
    assert tree(out) == tree(src)
    single = tmp_path / "weights.safetensors"
    single.write_bytes(b"\x00\x01" * 5000)
    w = reg.register("single", single)
    assert w.kind == "file" and [f.path for f in w.files] == ["weights.safetensors"]
    got = reg.checkout("single", "latest", tmp_path / "restored.bin")
    assert got.read_bytes() == single.read_bytes()
    doc = json.loads((reg.root / "models" / "llama" / "1" / "manifest.json").read_bytes())
    assert "sha256:" + hashlib.sha256(canonical(doc)).hexdigest() == v.digest
    assert doc["created_at"] == "2025-01-01T12:00:00.000000Z" and doc["metadata"] == {"eval": {"ppl": 11.5}}


def test_dedup_across_versions_and_identical_content_is_reused(reg, tmp_path, caplog):
    a = checkpoint(tmp_path / "a", seed=1)
    v1 = reg.register("m", a)
    n = blob_count(reg)
    assert n == 6
    caplog.set_level("INFO", logger="registry")
    again = reg.register("m", a)
    assert again.version == 1 and again.reused and blob_count(reg) == n
    assert "identical to version 1" in caplog.text
    b = checkpoint(tmp_path / "b", seed=2)  # shards, config, card differ; index, tokenizer shared
    v2 = reg.register("m", b)
    assert v2.version == 2 and blob_count(reg) == n + 4
    assert reg.register("m", a, metadata={"note": "same files, new metadata"}).version == 3  # not the latest's content
    assert blob_count(reg) == n + 4 and reg.register("other", a).version == 1 and blob_count(reg) == n + 4
    assert v1.content_digest == reg.get("other", 1).content_digest and v1.digest != reg.get("other", 1).digest


def test_refs_latest_stage_alias_and_unknowns(reg, tmp_path):
    for i in range(3):
        reg.register("m", checkpoint(tmp_path / f"c{i}", seed=i))
    reg.promote("m", 2, "production", reason="r")
    reg.promote("m", 3, "staging", reason="r")
    reg.set_alias("m", "champion", 1)
    assert [reg.get("m", r).version for r in ("latest", "production", "staging", "champion", 2, "2", "v3")] == \
        [3, 2, 3, 1, 2, 2, 3]
    with pytest.raises(NotFoundError, match=r"unknown model 'nope'; known models: m"):
        reg.get("nope", 1)
    with pytest.raises(NotFoundError, match=r"'m' has no version 9; live versions: 1, 2, 3"):
        reg.get("m", 9)
    with pytest.raises(NotFoundError, match=r"no version of 'm' is in stage 'archived'"):
        reg.get("m", "archived")
    with pytest.raises(NotFoundError, match=r"'champ' for 'm' \(did you mean 'champion'\?\).*an alias \(champion\)"):
        reg.get("m", "champ")
    with pytest.raises(ValueError, match="bad alias 'production'"):
        reg.set_alias("m", "production", 1)
    with pytest.raises(ValueError, match="bad model name"):
        reg.register("../escape", tmp_path / "c0")


def test_checkout_refuses_nonempty_dest_and_replaces_with_overwrite(reg, tmp_path):
    reg.register("m", checkpoint(tmp_path / "ck"))
    dest = write_tree(tmp_path / "dest", {"old.txt": "old"})
    with pytest.raises(RegistryError, match="non-empty directory"):
        reg.checkout("m", 1, dest)
    assert tree(dest) == {"old.txt": b"old"}
    (tmp_path / "empty").mkdir()
    reg.checkout("m", 1, tmp_path / "empty")
    reg.checkout("m", 1, dest, overwrite=True)
    assert tree(dest) == tree(tmp_path / "ck")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_corrupted_blob_fails_loudly_and_leaves_nothing(reg, tmp_path):
    src = checkpoint(tmp_path / "ck")
    v = reg.register("m", src)
    f = next(f for f in v.files if f.path == "config.json")
    blob = reg.blobs.path(f.sha256)
    os.chmod(blob, stat.S_IWUSR | stat.S_IRUSR)
    blob.write_bytes(b'{"d_model": 65}')
    bad = hashlib.sha256(b'{"d_model": 65}').hexdigest()
    with pytest.raises(IntegrityError) as exc:
        reg.checkout("m", 1, tmp_path / "out")
    assert "'config.json'" in str(exc.value) and f.sha256 in str(exc.value) and bad in str(exc.value)
    assert not (tmp_path / "out").exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(IntegrityError, match=f"'config.json': expected sha256 {f.sha256}, blob holds {bad}"):
        reg.verify("m", 1)
    blob.unlink()
    with pytest.raises(IntegrityError, match="'config.json': blob missing"):
        reg.verify("m", 1)


def test_edited_manifest_is_detected(reg, tmp_path):
    reg.register("m", checkpoint(tmp_path / "ck"), metadata={"eval": {"ppl": 30}})
    path = reg.root / "models" / "m" / "1" / "manifest.json"
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b'"ppl":30', b'"ppl":3'))
    with pytest.raises(IntegrityError, match="manifest .* was modified"):
        reg.get("m", 1)


def test_index_schema_and_event_log_is_append_only(reg, tmp_path):
    import sqlite3

    reg.register("m", checkpoint(tmp_path / "ck"))
    assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reg.db.execute("SELECT version FROM schema_version").fetchone()[0] == 1
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        reg.db.execute("DELETE FROM events")
    reg.db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RegistryError, match="schema 99, newer than"):
        Registry(reg.root).list_models()


def test_missing_root_is_not_created_on_read(tmp_path):
    with pytest.raises(NotFoundError, match="no registry at"):
        Registry(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


paths = st.lists(st.text("abcxyz/._-", min_size=1, max_size=12).filter(
    lambda p: all(part not in ("", ".", "..") for part in p.split("/"))), min_size=1, max_size=8, unique=True)


@settings(max_examples=60, deadline=None)
@given(paths=paths, data=st.data())
def test_manifest_bytes_do_not_depend_on_listing_order(paths, data):
    files = [FileEntry(p, i * 3, hashlib.sha256(p.encode()).hexdigest()) for i, p in enumerate(paths)]
    order = data.draw(st.permutations(files))
    meta = {f"k{i}": i for i in range(len(paths))}
    meta_reversed = dict(reversed(list(meta.items())))
    kw = dict(name="m", version=1, kind="directory", creator="me", created_at="t", parent=None)
    a = canonical(build_manifest(files=files, metadata=meta, tags=["y", "x"], **kw))
    b = canonical(build_manifest(files=order, metadata=meta_reversed, tags=["x", "y", "x"], **kw))
    assert a == b
    doc = json.loads(a)
    assert [f["path"] for f in doc["files"]] == sorted(paths) and a == canonical(doc)


def test_exclude_leaves_out_matching_paths(reg, tmp_path):
    src = tmp_path / "ckpt"
    for rel in ("model.safetensors", "optimizer/state.pt", "optimizer/deep/more.pt", "rng/cpu.pt", "config.json"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    v = reg.register("m", src, exclude=["optimizer/*", "rng/*"])
    assert [f.path for f in v.files] == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="every file matches the exclude patterns"):
        reg.register("m", src, exclude=["*"])
