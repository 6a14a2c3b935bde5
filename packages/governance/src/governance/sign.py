"""Checksums in GNU ``sha256sum`` format and detached Ed25519 signatures over them.

``CHECKSUMS.sha256`` holds one ``<sha256 hex>  <name>`` line per file, names relative to the checksum file's
directory (GNU coreutils escaping for names with a backslash or newline), so ``sha256sum -c`` checks it. With a
key, ``CHECKSUMS.sha256.sig`` is the 64-byte Ed25519 signature (RFC 8032, pure Ed25519) over the checksum file's
exact bytes and ``CHECKSUMS.sha256.pub.pem`` the SubjectPublicKeyInfo PEM, which OpenSSL 3 verifies with
``openssl pkeyutl -verify -pubin -inkey CHECKSUMS.sha256.pub.pem -rawin -in CHECKSUMS.sha256 -sigfile ...sig``.

Keys: a 32-byte raw Ed25519 seed file, or a PEM PKCS#8 private key (``openssl genpkey -algorithm ed25519``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance._io import existing_files, rel_name, sha256_file, write_atomic
from specs.errors import ConfigError

SIG_SUFFIX = ".sig"
PUB_SUFFIX = ".pub.pem"
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a 32-byte raw Ed25519 private key or an unencrypted PEM PKCS#8 one; anything else is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("key", f"private key file not found: {p}")
    data = p.read_bytes()
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError("key", f"{p} is an encrypted PEM key; decrypt it first "
                                     "(openssl pkey -in KEY -out PLAIN.pem)") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError("key", f"{p} is not a readable PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("key", f"{p} holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 private key")
        return key
    raise ConfigError("key", f"{p}: expected a 32-byte raw Ed25519 private key or a PEM PKCS#8 private key, "
                             f"got {len(data)} bytes that are not PEM")


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read an Ed25519 public key: PEM SubjectPublicKeyInfo, or 32 raw bytes."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("pubkey", f"public key file not found: {p}")
    data = p.read_bytes()
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("pubkey", f"{p} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("pubkey", f"{p} holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 public key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """sha256 hex of the public key's DER SubjectPublicKeyInfo (the DSSE ``keyid`` we stamp)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def verify_signature(key: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def keygen(outdir: str | os.PathLike[str], fmt: str = "raw", force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair into the directory ``outdir`` (created if missing): ``ed25519.key`` (32 raw bytes) or
    ``ed25519.pem`` (PKCS#8), mode 0600, and ``ed25519.pub.pem``. Unless ``force``, a directory that already
    holds a key of either format or a public key is refused, so no key is ever overwritten (a new public key
    beside an old private key would no longer match it)."""
    if fmt not in ("raw", "pem"):
        raise ConfigError("keygen.format", f"expected 'raw' or 'pem', got {fmt!r}")
    d = Path(outdir)
    if d.exists() and not d.is_dir():
        raise ConfigError("keygen.out", f"{d} is a file, not a directory; --out is the directory the key pair is "
                                        "written into (e.g. keys/)")
    priv_path = d / ("ed25519.key" if fmt == "raw" else "ed25519.pem")
    pub_path = d / "ed25519.pub.pem"
    if not force and (held := [p for p in (d / "ed25519.key", d / "ed25519.pem", pub_path) if p.exists()]):
        raise ConfigError("keygen.out", f"a key already exists in {d} ({', '.join(p.name for p in held)}); pass "
                                        "--force to replace the key pair (the old key is lost)")
    for p in (priv_path, pub_path):  # checked up front so --force never replaces one half of the pair
        if p.is_dir():
            raise ConfigError("keygen.out", f"cannot write {p}: it is a directory; expected a key file")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("keygen.out", f"cannot create the key directory {d}: {exc.strerror or exc}; --out must be "
                                        "a directory that exists or can be created") from None
    key = Ed25519PrivateKey.generate()
    if fmt == "raw":
        blob = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    else:
        blob = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    write_atomic(priv_path, blob, mode=0o600)
    write_atomic(pub_path, public_pem(key))
    return priv_path, pub_path


def format_checksums(entries: Sequence[tuple[str, str]]) -> str:
    """GNU coreutils lines; a name with '\\', LF or CR is escaped and its line starts with a backslash."""
    lines = []
    for name, digest in entries:
        if any(c in name for c in "\\\n\r"):
            esc = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{digest}  {esc}\n")
        else:
            lines.append(f"{digest}  {name}\n")
    return "".join(lines)


def parse_checksums(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``(entries, problems)``: the (name, sha256) pairs, and one message per malformed line."""
    entries, problems = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        escaped = raw.startswith("\\")
        m = _LINE.match(raw[1:] if escaped else raw)
        if not m:
            problems.append(f"line {i} is not '<sha256 hex>  <file name>': {raw[:80]!r}")
            continue
        name = m.group(2)
        if escaped:
            name = re.sub(r"\\(.)", lambda g: {"n": "\n", "r": "\r", "\\": "\\"}.get(g.group(1), g.group(0)), name)
        entries.append((name, m.group(1).lower()))
    return entries, problems


def write_checksums(files: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                    key_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write ``out`` (and ``out.sig`` + ``out.pub.pem`` with a key); return the written paths.

    The key is loaded and every file hashed before anything is written, so bad input leaves the directory as it was.
    """
    out_p = Path(out)
    paths = existing_files(files)
    key = load_private_key(key_path) if key_path is not None else None
    entries = list(dict.fromkeys((rel_name(p, out_p.parent), sha256_file(p)) for p in paths))
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise ConfigError("files", "two different files map to the same name in the checksum file")
    body = format_checksums(entries).encode("utf-8")
    written = [write_atomic(out_p, body)]
    if key is not None:
        written.append(write_atomic(f"{out_p}{SIG_SUFFIX}", key.sign(body)))
        written.append(write_atomic(f"{out_p}{PUB_SUFFIX}", public_pem(key)))
    else:
        # An old signature beside a new checksum file would fail verify for a confusing reason; drop it.
        Path(f"{out_p}{SIG_SUFFIX}").unlink(missing_ok=True)
    return written
