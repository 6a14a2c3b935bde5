"""``lmstack bundle``: build / verify / unpack / inspect, reproducibility, tamper and path-traversal refusal, Ed25519
signatures (cryptography and openssl keys), and the ``bundle:`` model source."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from pack import bundle_source as source_mod
from pack.bundle import build, read_manifest, unpack, verify
from pack.bundle_source import bundle_source
from pack.cli import main as lmstack
from pack.errors import PackError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real checkpoint (``ckpt/``) and governance artifacts for it (``artifacts/``)."""
    from governance.card import write_card
    from governance.sbom import write_sbom
    from governance.sign import write_checksums
    from model.lm import TransformerLM
    from specs.presets import preset

    root = tmp_path_factory.mktemp("release")
    cfg = dataclasses.replace(preset("llama-debug"), d_model=32, n_layers=1, d_ff=64, vocab_size=128, max_seq_len=32)
    torch.manual_seed(0)
    TransformerLM(cfg).eval().save_pretrained(root / "ckpt", name="tiny")
    art = root / "artifacts"
    art.mkdir()
    shutil.copy(root / "ckpt" / "model.safetensors", art / "model.safetensors")
    write_sbom(art / "SBOM.spdx.json", "tiny", [art / "model.safetensors"], environment=[])
    write_card(art / "MODEL_CARD.md", [art / "model.safetensors"], name="tiny")
    write_checksums([art / "model.safetensors", art / "SBOM.spdx.json", art / "MODEL_CARD.md"],
                    art / "CHECKSUMS.sha256")
    (art / "model.safetensors").unlink()  # the bundle carries the weights once, under model/
    return root


@pytest.fixture(scope="module")
def built(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "tiny.tar.gz"
    build(release / "ckpt", out, artifacts=release / "artifacts")
    return out


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None] | None = None,
             add: list[tarfile.TarInfo] | None = None) -> None:
    """Copy a bundle, replacing (bytes) or dropping (None) members' content, and appending raw members."""
    change = change or {}
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for ti in tin.getmembers():
            data = tin.extractfile(ti).read()  # type: ignore[union-attr]
            if ti.name in change:
                if change[ti.name] is None:
                    continue
                data = change[ti.name]  # type: ignore[assignment]
                ti.size = len(data)
            tout.addfile(ti, io.BytesIO(data))
        for ti in add or []:
            tout.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isreg() else None)


def test_build_verify_unpack_loads_same_logits(release: Path, built: Path, tmp_path: Path) -> None:
    from model.lm import TransformerLM

    info = verify(built)
    names = [m["path"] for m in info.manifest["members"]]
    assert names == sorted(names)
    assert set(names) == {"MODEL_CARD.md", "model/config.json", "model/model.safetensors", "model/modelcard.json",
                          "artifacts/SBOM.spdx.json", "artifacts/MODEL_CARD.md", "artifacts/MODEL_CARD.json",
                          "artifacts/CHECKSUMS.sha256"}
    assert info.manifest["name"] == "tiny" and info.manifest["created_from"]["checkpoint_format"] == "lmstack"
    assert "lmstack-pack" in info.manifest["built_with"] and info.signature is None

    out = tmp_path / "unpacked"
    unpack(built, out)
    for m in info.manifest["members"]:  # the manifest's hashes are those of the extracted files
        p = out / m["path"]
        assert _sha(p) == m["sha256"] and p.stat().st_size == m["bytes"]
    assert (out / "bundle.json").read_bytes() == info.manifest_bytes
    assert (out / "MODEL_CARD.md").read_bytes() == (release / "artifacts" / "MODEL_CARD.md").read_bytes()
    checks = subprocess.run(["sha256sum", "-c", "CHECKSUMS.sha256", "--ignore-missing"], cwd=out / "artifacts",
                            capture_output=True, text=True)
    assert checks.returncode == 0 and "SBOM.spdx.json: OK" in checks.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left

    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = TransformerLM.from_pretrained(release / "ckpt").eval()
    got = TransformerLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        assert torch.equal(ref(ids), got(ids))
    with pytest.raises(PackError, match="already exists"):
        unpack(built, out)


def test_system_tar_lists_members_owned_by_root(built: Path) -> None:
    listing = subprocess.run(["tar", "-tzvf", str(built)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in listing.splitlines()]
    assert [r[-1] for r in rows][:2] == ["bundle.json", "MODEL_CARD.md"]
    assert {r[-1] for r in rows} >= {"model/model.safetensors", "artifacts/SBOM.spdx.json"}
    assert all(r[0] == "-rw-r--r--" and r[1] == "0/0" and r[3] == "1970-01-01" for r in rows)  # no dirs, no links
    raw = built.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip: mtime 0, no file name


def test_reproducible_whatever_mtimes_modes_and_location(release: Path, built: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    shutil.copytree(release, other)
    for i, p in enumerate(sorted(other.rglob("*"))):
        if p.is_file():
            os.chmod(p, (0o600, 0o640, 0o664)[i % 3])
            os.utime(p, (1_000_000 + i, 2_000_000 + 7 * i))
    again = tmp_path / "again.tar.gz"
    build(other / "ckpt", again, artifacts=other / "artifacts")
    assert _sha(again) == _sha(built)

    os.chmod(other / "artifacts" / "SBOM.spdx.json", 0o755)  # an executable keeps its x bit, as 0755
    build(other / "ckpt", tmp_path / "x.tar.gz", artifacts=other / "artifacts")
    with tarfile.open(tmp_path / "x.tar.gz") as tf:
        assert tf.getmember("artifacts/SBOM.spdx.json").mode == 0o755
        assert tf.getmember("model/config.json").mode == 0o644


def test_source_date_epoch_sets_member_times(release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    build(release / "ckpt", a)
    build(release / "ckpt", b)
    assert _sha(a) == _sha(b)
    with tarfile.open(a) as tf:
        assert {ti.mtime for ti in tf.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        build(release / "ckpt", tmp_path / "c.tar.gz")


def test_card_rendered_from_modelcard_without_artifacts(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    info = build(release / "ckpt", out, name="renamed")
    with tarfile.open(out) as tf:
        card = tf.extractfile("MODEL_CARD.md").read().decode()  # type: ignore[union-attr]
    assert card.startswith("# renamed\n") and "| d_model | 32 |" in card
    assert _sha(release / "ckpt" / "model.safetensors") in card
    assert info.manifest["created_from"]["artifacts"] is None


def test_hugging_face_directory_hashed_as_found(release: Path, tmp_path: Path) -> None:
    from model.lm import TransformerLM

    hf = tmp_path / "hf"
    TransformerLM.from_pretrained(release / "ckpt").save_pretrained(hf, format="hf")
    (hf / "modelcard.json").unlink()
    (hf / ".cache").mkdir()
    (hf / ".cache" / "junk").write_text("left out")
    info = build(hf, tmp_path / "hf.tar.gz")
    assert info.manifest["created_from"]["checkpoint_format"] == "huggingface"
    assert {m["path"] for m in info.manifest["members"]} == {"MODEL_CARD.md", "model/config.json",
                                                             "model/model.safetensors"}
    unpack(tmp_path / "hf.tar.gz", tmp_path / "u")
    TransformerLM.from_pretrained(tmp_path / "u" / "model")


def test_checkpoint_failing_its_card_is_refused(release: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(release / "ckpt", ckpt)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"model\.safetensors: sha256 .* does not match the model card"):
        build(ckpt, tmp_path / "out.tar.gz")
    (ckpt / "config.json").unlink()
    with pytest.raises(PackError, match="no config.json"):
        build(ckpt, tmp_path / "out.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing written, no temp file left
    with pytest.raises(PackError, match="inside"):
        build(release / "ckpt", release / "ckpt" / "self.tar.gz")


def test_tampered_missing_and_extra_members_are_named(built: Path, tmp_path: Path) -> None:
    with tarfile.open(built) as tf:
        weights = bytearray(tf.extractfile("model/model.safetensors").read())  # type: ignore[union-attr]
    weights[100] ^= 1
    changed = tmp_path / "changed.tar.gz"
    _rewrite(built, changed, {"model/model.safetensors": bytes(weights)})
    with pytest.raises(PackError, match=r"model/model\.safetensors: changed") as exc:
        verify(changed)
    assert "config.json" not in str(exc.value)
    with pytest.raises(PackError, match="model.safetensors: changed"):
        unpack(changed, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    missing = tmp_path / "missing.tar.gz"
    _rewrite(built, missing, {"artifacts/SBOM.spdx.json": None})
    with pytest.raises(PackError, match="artifacts/SBOM.spdx.json: listed in bundle.json but missing"):
        verify(missing)
    extra = tmp_path / "extra.tar.gz"
    ti = tarfile.TarInfo("model/backdoor.py")
    ti.size = 3
    _rewrite(built, extra, add=[ti])
    with pytest.raises(PackError, match="model/backdoor.py: extra member"):
        verify(extra)
    assert lmstack(["bundle", "verify", str(extra)]) == 2


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "absolute", "hardlink"])
def test_unsafe_members_refused_before_extraction(built: Path, tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if kind == "dotdot":
        ti = tarfile.TarInfo("../evil")
        ti.size = 1
    elif kind == "absolute":
        ti = tarfile.TarInfo(str(tmp_path / "evil"))
        ti.size = 1
    else:
        ti = tarfile.TarInfo("model/link")
        ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        ti.linkname = str(tmp_path / "evil") if kind == "symlink" else "../../evil"
    bad = work / "bad.tar.gz"
    _rewrite(built, bad, add=[ti])
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(PackError, match="unsafe members, refusing the bundle before extracting anything"):
        unpack(bad, work / "out")
    with pytest.raises(PackError, match="unsafe"):
        verify(bad)
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted, inside or outside


def _keypair(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv, pub = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_signatures(release: Path, built: Path, tmp_path: Path) -> None:
    priv, pub = _keypair(tmp_path, "good")
    _, other = _keypair(tmp_path, "other")
    signed = tmp_path / "signed.tar.gz"
    info = build(release / "ckpt", signed, artifacts=release / "artifacts", sign_key=priv)
    assert verify(signed, pubkey=pub).signer == info.signer
    assert read_manifest(signed, pubkey=pub).digest == info.digest
    with pytest.raises(PackError, match="no signature in bundle.sig verifies"):
        verify(signed, pubkey=other)
    with pytest.raises(PackError, match="not signed"):
        verify(built, pubkey=pub)
    assert lmstack(["bundle", "verify", str(signed), "--pubkey", str(pub)]) == 0
    assert lmstack(["bundle", "verify", str(signed), "--pubkey", str(other)]) == 2

    # An edited manifest (hashes of a swapped model) no longer matches the signed one.
    doc = json.loads(info.manifest_bytes)
    doc["name"] = "evil"
    edited = tmp_path / "edited.tar.gz"
    _rewrite(signed, edited, {"bundle.json": json.dumps(doc).encode()})
    verify(edited)  # internally consistent without a key ...
    with pytest.raises(PackError, match="signs a different bundle.json"):
        verify(edited, pubkey=pub)  # ... but not what the key signed

    # openssl checks the same DSSE signature over PAE(type, bundle.json) independently.
    env = json.loads(info.signature)  # type: ignore[arg-type]
    ptype = env["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(info.manifest_bytes), info.manifest_bytes)
    (tmp_path / "pae.bin").write_bytes(pae)
    import base64
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    ok = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in",
                         str(tmp_path / "pae.bin"), "-sigfile", str(tmp_path / "sig.bin")], capture_output=True)
    assert ok.returncode == 0, ok.stderr


def test_openssl_generated_key(release: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(priv)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)], check=True)
    out = tmp_path / "b.tar.gz"
    assert lmstack(["bundle", "build", str(release / "ckpt"), "-o", str(out), "--sign-key", str(priv)]) == 0
    assert verify(out, pubkey=pub).signer is not None
    _, other = _keypair(tmp_path, "other")
    with pytest.raises(PackError, match="verifies"):
        verify(out, pubkey=other)


def test_cli_inspect_and_unpack(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lmstack(["bundle", "inspect", str(built), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == verify(built).manifest
    assert lmstack(["bundle", "inspect", str(built)]) == 0
    text = capsys.readouterr().out
    assert "name      tiny" in text and "model/model.safetensors" in text
    assert lmstack(["bundle", "unpack", str(built), "-o", str(tmp_path / "u")]) == 0
    assert (tmp_path / "u" / "model" / "model.safetensors").is_file()
    assert lmstack(["bundle", "verify", str(tmp_path / "nope.tar.gz")]) == 2
    assert "no such bundle file" in capsys.readouterr().err
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    assert lmstack(["bundle", "inspect", str(tmp_path / "junk.tar.gz")]) == 2


def test_bundle_source_extracts_once_and_checks_signatures(release: Path, built: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from model.lm import TransformerLM
    from specs.sources import local_path

    monkeypatch.setenv("LMSTACK_BUNDLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMSTACK_BUNDLE_PUBKEY", raising=False)
    first = local_path(f"bundle:{built}", extra={"bundle": bundle_source})
    assert first == tmp_path / "cache" / read_manifest(built).digest / "model"
    TransformerLM.from_pretrained(first)
    stamp = (first / "model.safetensors").stat()

    calls = []
    monkeypatch.setattr(source_mod, "unpack", lambda *a, **k: calls.append(a))
    assert bundle_source(str(built)) == first and not calls  # reused: no second extraction
    assert (first / "model.safetensors").stat().st_ino == stamp.st_ino
    monkeypatch.undo()

    monkeypatch.setenv("LMSTACK_BUNDLE_CACHE", str(tmp_path / "cache"))
    _, pub = _keypair(tmp_path, "k")
    monkeypatch.setenv("LMSTACK_BUNDLE_PUBKEY", str(pub))
    with pytest.raises(PackError, match="not signed"):  # cached or not, an unsigned bundle is refused
        bundle_source(str(built))
    priv, _ = _keypair(tmp_path, "k2")
    build(release / "ckpt", tmp_path / "signed.tar.gz", sign_key=priv)
    with pytest.raises(PackError, match="verifies with public key"):
        bundle_source(str(tmp_path / "signed.tar.gz"))
    monkeypatch.setenv("LMSTACK_BUNDLE_PUBKEY", str(tmp_path / "k2.pub.pem"))
    signed_model = bundle_source(str(tmp_path / "signed.tar.gz"))
    assert signed_model != first and (signed_model / "model.safetensors").read_bytes() == \
        (release / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(PackError, match="no such bundle file"):
        bundle_source(str(tmp_path / "missing.tar.gz"))


def test_file_changed_while_bundling_leaves_nothing(release: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pack.bundle as bundle_mod

    real = bundle_mod.file_sha256
    monkeypatch.setattr(bundle_mod, "file_sha256", lambda p: ("0" * 64, real(p)[1]) if p.name == "SBOM.spdx.json"
                        else real(p))  # as if the file changed between hashing and archiving
    with pytest.raises(PackError, match=r"SBOM\.spdx\.json: changed while it was being bundled"):
        build(release / "ckpt", tmp_path / "out.tar.gz", artifacts=release / "artifacts")
    assert list(tmp_path.iterdir()) == []
