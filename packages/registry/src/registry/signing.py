"""Ed25519 signatures over version manifests in DSSE envelopes, with PEM keys as OpenSSL writes them.

DSSE v1 (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md): the signature covers the
Pre-Authentication Encoding ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (LEN: ASCII
decimal byte count), never the envelope's JSON; the envelope is ``{"payload": b64(body), "payloadType": type,
"signatures": [{"keyid", "sig": b64(sig)}]}`` in standard base64. Here the body is the version's canonical
manifest and the type ``application/vnd.lmstack.manifest+json``; ``keyid`` is the sha256 hex of the raw 32-byte
public key. Ed25519 is RFC 8032's pure variant, so ``openssl pkeyutl -verify -rawin`` checks the same bytes.
Keys: PKCS#8 PEM private (``openssl genpkey -algorithm ed25519``), SubjectPublicKeyInfo PEM public
(``openssl pkey -pubout``), as cosign's ``--key`` files are PEM too; or files of the 32 raw key bytes, the format
lmstack-governance's ``sign --key`` takes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry.errors import SignatureError
from registry.manifest import MEDIA_TYPE
from specs.errors import ConfigError
from specs.io import atomic_write_bytes

PAYLOAD_TYPE = MEDIA_TYPE


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """A PKCS#8 PEM key, or a file of the 32 raw bytes (lmstack-governance's ``sign --key`` format)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("private_key", f"private key file not found: {p}")
    data = p.read_bytes()
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError("private_key", f"{p} is encrypted; expected an unencrypted PKCS#8 PEM key "
                                         "(openssl pkey -in KEY -out PLAIN.pem)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("private_key", f"{p} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("private_key", f"{p} holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """A SubjectPublicKeyInfo PEM key, or a file of the 32 raw bytes."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("public_key", f"public key file not found: {p}")
    data = p.read_bytes()
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("public_key", f"{p} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("public_key", f"{p} holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def keygen(directory: str | os.PathLike[str], name: str = "ed25519") -> tuple[Path, Path]:
    """Write ``<name>.pem`` (PKCS#8, mode 0600) and ``<name>.pub.pem`` into ``directory``; never overwrites."""
    d = Path(directory)
    priv, pub = d / f"{name}.pem", d / f"{name}.pub.pem"
    for p in (priv, pub):
        if p.exists():
            raise ConfigError("keygen", f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(priv, pem, 0o600)
    atomic_write_bytes(pub, public_pem(key), 0o644)
    return priv, pub


def envelope(body: bytes, signatures: list[dict[str, str]]) -> dict[str, Any]:
    return {"payload": base64.b64encode(body).decode("ascii"), "payloadType": PAYLOAD_TYPE,
            "signatures": sorted(signatures, key=lambda s: s["keyid"])}


def canonical_envelope(env: dict[str, Any]) -> bytes:
    """The envelope file's bytes (the signature covers the PAE, not these, so the layout is free)."""
    return (json.dumps(env, sort_keys=True, indent=2) + "\n").encode("utf-8")


def signature_entry(keyid: str, sig: bytes) -> dict[str, str]:
    return {"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")}


def sign(body: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    return signature_entry(key_id(key), key.sign(pae(PAYLOAD_TYPE, body)))


def read_envelope(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SignatureError(f"no signature envelope at {path}")
    try:
        env = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureError(f"{path} is not a JSON DSSE envelope: {exc}") from None
    if not isinstance(env, dict) or not {"payload", "payloadType", "signatures"} <= set(env) \
            or not isinstance(env["signatures"], list):
        raise SignatureError(f"{path} is not a DSSE envelope (payload, payloadType, signatures expected)")
    return env


def check_envelope(env: dict[str, Any], manifest: bytes, key: Ed25519PublicKey, where: str) -> str:
    """The keyid that verifies: the envelope must carry exactly ``manifest`` as its body, with the manifest
    payload type, and a signature by ``key`` over the PAE. Otherwise a SignatureError says which check failed."""
    if env["payloadType"] != PAYLOAD_TYPE:
        raise SignatureError(f"{where}: payloadType {env['payloadType']!r}, expected {PAYLOAD_TYPE!r}")
    try:
        body = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise SignatureError(f"{where}: payload is not valid base64") from None
    if body != manifest:
        raise SignatureError(f"{where}: the envelope signs a different manifest "
                             f"(sha256 {hashlib.sha256(body).hexdigest()[:16]}..., this version's is "
                             f"{hashlib.sha256(manifest).hexdigest()[:16]}...); was it moved from another version?")
    kid = key_id(key)
    message = pae(env["payloadType"], body)
    for s in env["signatures"]:
        try:
            raw = base64.b64decode(s["sig"], validate=True)
            key.verify(raw, message)
        except (binascii.Error, TypeError, ValueError, KeyError, InvalidSignature):
            continue
        return kid
    keyids = ", ".join(str(s.get("keyid", "?"))[:16] for s in env["signatures"] if isinstance(s, dict))
    raise SignatureError(f"{where}: no signature verifies with public key {kid[:16]}... "
                         f"(signed by: {keyids or 'nobody'})")
