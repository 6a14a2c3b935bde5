"""``registry:NAME@REF`` as a model path (the ``lmstack.sources`` plugin): checked out once, verified, signed if
asked."""

from __future__ import annotations

import pytest

from registry import Registry, keygen
from registry.errors import NotFoundError, SignatureError
from specs.sources import local_path


@pytest.fixture
def registered(tmp_path, monkeypatch):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (src / "sub" / "config.json").write_text('{"d_model": 64}')
    root = tmp_path / "reg"
    with Registry(root) as reg:
        v1 = reg.register("tiny", src)
        (src / "config.json").write_text("{}")
        v2 = reg.register("tiny", src)
        reg.promote("tiny", v1.version, "production", reason="test")
    monkeypatch.setenv("LMSTACK_REGISTRY", str(root))
    monkeypatch.delenv("LMSTACK_REGISTRY_PUBKEY", raising=False)
    return root, src, v1, v2


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_a_registry_reference_is_a_verified_checkout(registered):
    root, src, v1, v2 = registered
    prod = local_path("registry:tiny@production")  # through the installed entry point
    assert prod == root / "checkouts" / v1.digest.removeprefix("sha256:")
    assert set(_files(prod)) == {"model.safetensors", "sub/config.json"}
    latest = local_path("registry:tiny")
    assert _files(latest) == _files(src) and latest != prod
    mtime = prod.stat().st_mtime_ns
    assert local_path(f"registry:tiny@{v1.version}") == prod and prod.stat().st_mtime_ns == mtime  # reused
    with pytest.raises(NotFoundError, match="'nope'"):
        local_path("registry:nope@latest")


def test_a_public_key_admits_only_signed_versions(registered, tmp_path, monkeypatch):
    root, _, v1, _ = registered
    priv, pub = keygen(tmp_path / "keys")
    monkeypatch.setenv("LMSTACK_REGISTRY_PUBKEY", str(pub))
    with pytest.raises(SignatureError):
        local_path("registry:tiny@production")
    with Registry(root) as reg:
        reg.sign("tiny", v1.version, priv)
    assert local_path("registry:tiny@production").is_dir()


def test_no_registry_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTACK_REGISTRY", str(tmp_path / "none"))
    with pytest.raises(NotFoundError, match="no registry at"):
        local_path("registry:tiny")


def test_fine_tuning_starts_from_a_registry_version(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from train.run import cli

    cfg = Path(__file__).resolve().parents[3] / "cfgs" / "debug.yaml"
    common = ["--config", str(cfg), "--train.steps", "2", "--train.eval_every", "0", "--train.ckpt_every", "2",
              "--train.callbacks", "[]"]
    assert cli([*common, "--train.out_dir", str(tmp_path / "base")]) == 0
    monkeypatch.setenv("LMSTACK_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.delenv("LMSTACK_REGISTRY_PUBKEY", raising=False)
    with Registry(tmp_path / "reg") as reg:
        v = reg.register("base", tmp_path / "base" / "checkpoints" / "step_00000002")
        reg.promote("base", v.version, "production", reason="test")
    assert cli([*common, "--train.out_dir", str(tmp_path / "ft"), "--train.init_from",
                "registry:base@production"]) == 0
    meta = json.loads((tmp_path / "ft" / "checkpoints" / "step_00000002" / "metadata.json").read_text())
    (parent,) = [p for p in meta["parents"] if p["kind"] == "model"]
    assert parent["source"] == "registry:base@production"
    assert Path(parent["path"]) == tmp_path / "reg" / "checkouts" / v.digest.removeprefix("sha256:")
    assert parent["sha256"] == next(f.sha256 for f in v.files if f.path == "model.safetensors")
    assert cli([*common, "--train.out_dir", str(tmp_path / "bad"), "--train.init_from", "registry:nope"]) == 2


def test_gc_removes_the_checkouts_of_deleted_versions_only(registered):
    root, _, v1, v2 = registered
    prod, latest = local_path("registry:tiny@production"), local_path("registry:tiny")
    dead = root / "checkouts" / ".x.999999999.0123abcd.tmp"  # a checkout whose writer has exited
    dead.mkdir()
    (dead / "half").write_bytes(b"x" * 100)
    with Registry(root) as reg:
        r = reg.gc()
        assert r.checkouts_removed == 1 and r.bytes_freed == 100 and prod.is_dir() and latest.is_dir()
        reg.apply_retention({"keep_last": 0, "keep_stages": ["production"]}, "tiny")  # deletes v2
        size = sum(f.stat().st_size for f in latest.rglob("*") if f.is_file())
        r = reg.gc()
        assert r.checkouts_removed == 1 and not latest.exists() and prod.is_dir()
        assert r.bytes_freed >= size  # the checkout's bytes, besides v2's own blobs
        assert reg.history()[-1].details["checkouts_removed"] == 1
    assert local_path("registry:tiny@production") == prod  # the live version's checkout is still served
