"""Checksums checked by the real ``sha256sum -c``, signatures by the real ``openssl pkeyutl -verify``."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from governance.sign import format_checksums, load_private_key, parse_checksums, write_checksums

needs_sha256sum = pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU coreutils sha256sum not installed")


def _openssl_has_ed25519() -> bool:
    if shutil.which("openssl") is None:
        return False
    r = subprocess.run(["openssl", "list", "-public-key-algorithms"], capture_output=True, text=True)
    return "ED25519" in r.stdout.upper()


needs_openssl = pytest.mark.skipif(not _openssl_has_ed25519(),
                                   reason="the openssl binary lacks Ed25519 (needs OpenSSL >= 1.1.1)")


def _openssl_verify(checksums: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", f"{checksums}.pub.pem", "-rawin",
                           "-in", str(checksums), "-sigfile", f"{checksums}.sig"], capture_output=True, text=True)


@needs_sha256sum
def test_sha256sum_checks_our_file(cli, art: Path) -> None:
    out = art / "CHECKSUMS.sha256"
    rc, _, _ = cli("sign", "--files", art / "model.onnx", art / "tokenizer.json", "--out", out)
    assert rc == 0 and not Path(f"{out}.sig").exists()
    lines = out.read_text().splitlines()
    assert [ln.split("  ", 1)[1] for ln in lines] == ["model.onnx", "tokenizer.json"]
    ok = subprocess.run(["sha256sum", "-c", out.name], cwd=art, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.count(": OK") == 2
    (art / "tokenizer.json").write_text("tampered\n")
    bad = subprocess.run(["sha256sum", "-c", out.name], cwd=art, capture_output=True, text=True)
    assert bad.returncode != 0 and "tokenizer.json: FAILED" in bad.stdout


@needs_sha256sum
def test_escaped_names_round_trip_through_sha256sum(tmp_path: Path) -> None:
    odd = tmp_path / "we\\ird\nname.bin"
    odd.write_bytes(b"x" * 10)
    plain = tmp_path / "plain name.bin"
    plain.write_bytes(b"y")
    out = tmp_path / "CHECKSUMS.sha256"
    write_checksums([odd, plain], out)
    assert out.read_text().startswith("\\")
    ok = subprocess.run(["sha256sum", "-c", out.name], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    entries, problems = parse_checksums(out.read_text())
    assert problems == [] and sorted(n for n, _ in entries) == sorted([odd.name, plain.name])
    # and we read what sha256sum itself writes
    theirs = subprocess.run(["sha256sum", odd.name, plain.name], cwd=tmp_path, capture_output=True, text=True).stdout
    assert sorted(parse_checksums(theirs)[0]) == sorted(entries)
    assert format_checksums(parse_checksums(theirs)[0]) == theirs


@needs_openssl
def test_openssl_verifies_signature_from_generated_raw_key(cli, art: Path, tmp_path: Path) -> None:
    rc, _, _ = cli("keygen", "--out", tmp_path / "k")
    key = tmp_path / "k" / "ed25519.key"
    assert rc == 0 and key.stat().st_size == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    out = art / "CHECKSUMS.sha256"
    rc, _, _ = cli("sign", "--files", art / "model.onnx", art / "tokenizer.json", "--out", out, "--key", key)
    assert rc == 0 and Path(f"{out}.sig").stat().st_size == 64
    assert Path(f"{out}.pub.pem").read_bytes() == (tmp_path / "k" / "ed25519.pub.pem").read_bytes()
    r = _openssl_verify(out)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout
    out.write_text(out.read_text().replace("model.onnx", "model2.onnx"))
    assert _openssl_verify(out).returncode != 0


@needs_openssl
def test_openssl_generated_pem_key_is_accepted(art: Path, tmp_path: Path) -> None:
    pem = tmp_path / "openssl.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(pem)], check=True, capture_output=True)
    out = art / "CHECKSUMS.sha256"
    write_checksums([art / "model.onnx"], out, pem)
    assert _openssl_verify(out).returncode == 0
    # the public key we wrote is the one openssl derives from the private key
    derived = subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout"], capture_output=True, check=True).stdout
    assert Path(f"{out}.pub.pem").read_bytes() == derived


def test_keygen_pem_format_and_no_overwrite(cli, tmp_path: Path) -> None:
    rc, _, _ = cli("keygen", "--out", tmp_path, "--format", "pem")
    assert rc == 0 and stat.S_IMODE((tmp_path / "ed25519.pem").stat().st_mode) == 0o600
    first = (tmp_path / "ed25519.pem").read_bytes()
    load_private_key(tmp_path / "ed25519.pem")
    rc, _, err = cli("keygen", "--out", tmp_path, "--format", "pem")
    assert rc == 2 and "already exists" in err and (tmp_path / "ed25519.pem").read_bytes() == first
    assert cli("keygen", "--out", tmp_path, "--format", "pem", "--force")[0] == 0
    assert (tmp_path / "ed25519.pem").read_bytes() != first


@pytest.mark.parametrize("kind", ["short", "long", "rsa_like", "ec", "encrypted", "garbage_pem"])
def test_bad_keys_fail_cleanly_and_write_nothing(run_module, art: Path, tmp_path: Path, kind: str) -> None:
    key = tmp_path / "bad.key"
    if kind == "short":
        key.write_bytes(b"\x01" * 31)
    elif kind == "long":
        key.write_bytes(b"\x01" * 64)
    elif kind == "rsa_like":
        key.write_bytes(b"not a key at all, just some text\n")
    elif kind == "ec":
        key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    elif kind == "encrypted":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")))
    else:
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    out = art / "CHECKSUMS.sha256"
    r = run_module("sign", "--files", art / "model.onnx", "--out", out, "--key", key)
    assert r.returncode == 2 and r.stderr.startswith("error: key:") and "Traceback" not in r.stderr
    expected = {"short": "got 31 bytes", "long": "got 64 bytes", "rsa_like": "32-byte raw Ed25519",
                "ec": "expected an Ed25519 private key", "encrypted": "encrypted PEM", "garbage_pem": "PEM"}[kind]
    assert expected in r.stderr
    assert sorted(p.name for p in art.iterdir()) == ["model.onnx", "tokenizer.json"]


def test_missing_input_file_writes_nothing(cli, art: Path) -> None:
    rc, _, err = cli("sign", "--files", art / "model.onnx", art / "absent.bin", "--out", art / "CHECKSUMS.sha256")
    assert rc == 2 and "absent.bin" in err
    assert not (art / "CHECKSUMS.sha256").exists()


def test_keygen_out_that_is_not_a_usable_directory(run_module, cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = run_module("keygen", "--out", empty)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: keygen.out: {empty} is a file, not a directory; --out is the directory" in r.stderr
    rc, _, err = cli("keygen", "--out", empty / "keys")
    assert rc == 2 and f"cannot create the key directory {empty / 'keys'}: Not a directory" in err
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        r = run_module("keygen", "--out", "/proc/keys_nope")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "cannot create the key directory /proc/keys_nope: No such file or directory" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["empty.txt"] and empty.read_bytes() == b""


def test_keygen_never_overwrites_a_key_of_either_format(cli, tmp_path: Path) -> None:
    assert cli("keygen", "--out", tmp_path)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc, _, err = cli("keygen", "--out", tmp_path, "--format", "pem")  # would replace the raw key's public key
    assert rc == 2 and "a key already exists in" in err and "ed25519.key, ed25519.pub.pem" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "ed25519.key").unlink()  # a lone public key (e.g. a pinned one) is kept too
    rc, _, err = cli("keygen", "--out", tmp_path)
    assert rc == 2 and "(ed25519.pub.pem); pass --force" in err
    assert (tmp_path / "ed25519.pub.pem").read_bytes() == before["ed25519.pub.pem"]
    (tmp_path / "ed25519.pub.pem").unlink()
    (tmp_path / "ed25519.pub.pem").mkdir()  # --force must not replace the private key and then fail on the public one
    (tmp_path / "ed25519.key").write_bytes(b"k" * 32)
    rc, _, err = cli("keygen", "--out", tmp_path, "--force")
    assert rc == 2 and "ed25519.pub.pem: it is a directory" in err
    assert (tmp_path / "ed25519.key").read_bytes() == b"k" * 32
