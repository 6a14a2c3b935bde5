"""Ed25519/DSSE signatures against the openssl CLI both ways, tampering, moved envelopes, the signature gate."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest
from conftest import write_tree

from registry import GateError, SignatureError, keygen, pae
from registry.signing import PAYLOAD_TYPE, key_id, load_public_key
from specs.errors import ConfigError

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")


def openssl(*args):
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_versions(reg, tmp_path):
    reg.register("m", write_tree(tmp_path / "a", {"w.bin": "one", "config.json": "{}"}))
    reg.register("m", write_tree(tmp_path / "b", {"w.bin": "two", "config.json": "{}"}))
    return reg


def envelope_path(reg, version):
    return reg.root / "models" / "m" / str(version) / "manifest.dsse.json"


def test_pae_matches_the_dsse_spec_example():
    # protocol.md's worked example: PAE("http://example.com/HelloWorld", "hello world")
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


@needs_openssl
def test_registry_signature_verifies_with_openssl(two_versions, tmp_path):
    reg = two_versions
    priv, pub = keygen(tmp_path / "keys")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    kid = reg.sign("m", 1, priv, actor="release")
    env = json.loads(envelope_path(reg, 1).read_bytes())
    body = base64.b64decode(env["payload"])
    assert env["payloadType"] == PAYLOAD_TYPE and body == (reg.root / "models/m/1/manifest.json").read_bytes()
    assert env["signatures"][0]["keyid"] == kid == key_id(load_public_key(pub))
    (tmp_path / "pae.bin").write_bytes(pae(PAYLOAD_TYPE, body))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    r = openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", tmp_path / "pae.bin",
                "-sigfile", tmp_path / "sig.bin")
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout
    (tmp_path / "pae.bin").write_bytes(pae(PAYLOAD_TYPE, body + b" "))
    assert openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", tmp_path / "pae.bin",
                   "-sigfile", tmp_path / "sig.bin").returncode != 0
    assert reg.verify_signature("m", 1, pub) == kid and reg.get("m", 1).signed_by == (kid,)
    # openssl derives the same raw public key: keyid = sha256 of the 32 raw bytes at the end of the DER SPKI
    der = subprocess.run([OPENSSL, "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], capture_output=True).stdout
    import hashlib
    assert hashlib.sha256(der[-32:]).hexdigest() == kid


@needs_openssl
def test_openssl_keys_and_signatures_verify_in_registry(two_versions, tmp_path):
    reg = two_versions
    priv, pub = tmp_path / "priv.pem", tmp_path / "pub.pem"
    assert openssl("genpkey", "-algorithm", "ed25519", "-out", priv).returncode == 0
    assert openssl("pkey", "-in", priv, "-pubout", "-out", pub).returncode == 0
    kid = reg.sign("m", 2, priv)  # an openssl-made key signs in registry
    assert reg.verify_signature("m", 2, pub) == kid
    (tmp_path / "pae.bin").write_bytes(reg.signing_payload("m", 1))
    r = openssl("pkeyutl", "-sign", "-inkey", priv, "-rawin", "-in", tmp_path / "pae.bin", "-out", tmp_path / "sig")
    assert r.returncode == 0, r.stderr
    assert reg.attach_signature("m", 1, (tmp_path / "sig").read_bytes(), pub) == kid  # an openssl-made signature
    assert reg.verify_signature("m", 1, pub) == kid
    with pytest.raises(SignatureError, match="no signature verifies"):
        reg.attach_signature("m", 2, (tmp_path / "sig").read_bytes(), pub)  # signed v1's manifest, not v2's


def test_tampering_and_moved_envelopes_fail(two_versions, tmp_path):
    reg = two_versions
    priv, pub = keygen(tmp_path / "k")
    _, other_pub = keygen(tmp_path / "k", name="other")
    reg.sign("m", 1, priv)
    with pytest.raises(SignatureError, match="no signature verifies with public key"):
        reg.verify_signature("m", 1, other_pub)
    with pytest.raises(SignatureError, match="no signature envelope"):
        reg.verify_signature("m", 2, pub)
    shutil.copy(envelope_path(reg, 1), envelope_path(reg, 2))  # a valid signature moved to another version
    with pytest.raises(SignatureError, match="signs a different manifest .* moved from another version"):
        reg.verify_signature("m", 2, pub)
    env = json.loads(envelope_path(reg, 1).read_bytes())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    envelope_path(reg, 1).write_text(json.dumps(env))
    with pytest.raises(SignatureError, match="no signature verifies"):
        reg.verify_signature("m", 1, pub)
    reg.sign("m", 1, priv)  # re-signing replaces this key's entry
    manifest = reg.root / "models/m/1/manifest.json"
    os.chmod(manifest, 0o644)
    doc = json.loads(manifest.read_bytes())
    doc["metadata"] = {"eval": {"ppl": 1.0}}
    tampered = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    manifest.write_bytes(tampered)
    env = json.loads(envelope_path(reg, 1).read_bytes())
    env["payload"] = base64.b64encode(tampered).decode()  # even with the payload swapped in, the signature fails
    envelope_path(reg, 1).write_text(json.dumps(env))
    from registry import IntegrityError
    with pytest.raises(IntegrityError, match="was modified"):
        reg.verify_signature("m", 1, pub)


def test_signature_gate_and_trusted_keys(two_versions, tmp_path):
    reg = two_versions
    priv, pub = keygen(tmp_path / "k")
    with pytest.raises(GateError, match=r"refusing to promote m v1 to production: signature required: .*no signature"):
        reg.promote("m", 1, "production", reason="x", require_signature=True, public_key=pub)
    reg.sign("m", 1, priv)
    with pytest.raises(GateError, match="no trusted keys"):
        reg.promote("m", 1, "production", reason="x", require_signature=True)
    kid = reg.trust(pub)
    assert (reg.root / "trusted" / f"{kid}.pub.pem").is_file()
    assert reg.promote("m", 1, "production", reason="signed", require_signature=True).stage == "production"
    shutil.copy(envelope_path(reg, 1), envelope_path(reg, 2))
    with pytest.raises(GateError, match="signs a different manifest"):
        reg.promote("m", 2, "production", reason="x", require_signature=True)
    assert reg.get("m", "production").version == 1
    signs = [e for e in reg.history("m") if e.action == "version.sign"]
    assert [(e.version, e.details["keyid"]) for e in signs] == [(1, kid)]


def test_key_errors(tmp_path):
    priv, _ = keygen(tmp_path)
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        keygen(tmp_path)
    from registry.signing import load_private_key
    with pytest.raises(ConfigError, match="private key file not found"):
        load_private_key(tmp_path / "none.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        load_public_key(priv)


def test_raw_32_byte_keys_are_the_pem_keys(two_versions, tmp_path):
    """A file of the 32 raw key bytes (governance's ``sign --key`` format) is the same key as its PEM form."""
    from cryptography.hazmat.primitives import serialization

    from registry.signing import load_private_key

    reg = two_versions
    priv, pub = keygen(tmp_path / "keys")
    key = load_private_key(priv)
    raw_priv, raw_pub = tmp_path / "k.raw", tmp_path / "k.pub.raw"
    raw_priv.write_bytes(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption()))
    raw_pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    assert key_id(load_private_key(raw_priv)) == key_id(load_public_key(raw_pub)) == key_id(load_public_key(pub))
    kid = reg.sign("m", 1, raw_priv, actor="release")
    assert reg.verify_signature("m", 1, pub) == kid  # signed with the raw key, checked with the PEM one
    assert reg.verify_signature("m", 1, raw_pub) == kid
