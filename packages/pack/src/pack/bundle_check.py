"""Reading lmstack bundles safely: the manifest, signature checks, ``verify`` and ``unpack``.

``verify`` refuses unsafe members (absolute names, ``..``, links, devices) before reading any content, then hashes every
member against ``bundle.json``; ``unpack`` verifies, extracts (tarfile's ``data`` filter) into a temporary sibling,
hashes what landed on disk and renames it into place. :mod:`pack.bundle` writes bundles and holds the CLI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pack.errors import PackError

FORMAT = "lmstack-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
SIGNATURE = "bundle.sig"
CARD_MD = "MODEL_CARD.md"
PAYLOAD_TYPE = "application/vnd.lmstack.bundle+json"
_CHUNK = 1 << 20
_MAX_HEAD_BYTES = 64 << 20  # bundle.json / bundle.sig larger than this are not ours


@dataclass(frozen=True)
class BundleInfo:
    """A bundle's manifest as read from its tarball; ``signer`` is the keyid whose signature verified, if checked."""

    path: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes | None
    signer: str | None = None

    @property
    def digest(self) -> str:
        """sha256 hex of bundle.json's bytes: names the bundle's content (the signature covers these bytes)."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256 hex, bytes) of a file, read once."""
    with open(path, "rb") as f:
        return _hash_stream(f)


def tar_member(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.type = size, mode, mtime, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def signing_api() -> Any:
    """lmstack-registry's DSSE and Ed25519 key handling (the same keys and key ids as the registry's)."""
    try:
        from registry import signing
    except ImportError:
        raise PackError("signing and signature checks need lmstack-registry: pip install 'lmstack-pack[sign]'") \
            from None
    return signing



def check_signature(manifest_bytes: bytes, envelope: bytes | None, pubkey: str | os.PathLike[str],
                    where: str) -> str:
    """The keyid that verifies: ``envelope`` (bundle.sig) must be a DSSE envelope carrying exactly
    ``manifest_bytes`` with a valid Ed25519 signature by ``pubkey``; otherwise a PackError says which check failed."""
    signing = signing_api()
    key = signing.load_public_key(pubkey)
    from cryptography.exceptions import InvalidSignature

    if envelope is None:
        raise PackError(f"{where}: not signed (no {SIGNATURE}), but a public key was given; build it with --sign-key")
    try:
        env = json.loads(envelope)
        body = base64.b64decode(env["payload"], validate=True)
        sigs, ptype = list(env["signatures"]), str(env["payloadType"])
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise PackError(f"{where}: {SIGNATURE} is not a DSSE envelope (payload, payloadType, signatures)") from None
    if ptype != PAYLOAD_TYPE:
        raise PackError(f"{where}: {SIGNATURE} has payloadType {ptype!r}, expected {PAYLOAD_TYPE!r}")
    if body != manifest_bytes:
        raise PackError(f"{where}: {SIGNATURE} signs a different {MANIFEST} (was the manifest edited?)")
    for s in sigs:
        try:
            key.verify(base64.b64decode(s["sig"], validate=True), signing.pae(ptype, body))
        except (binascii.Error, TypeError, ValueError, KeyError, InvalidSignature):
            continue
        return signing.key_id(key)
    raise PackError(f"{where}: no signature in {SIGNATURE} verifies with public key {signing.key_id(key)[:16]}... "
                    f"({pubkey}); signed by: {', '.join(str(s.get('keyid', '?'))[:16] for s in sigs) or 'nobody'}")


# ---------------------------------------------------------------------------------------------------------- verify


def _unsafe(ti: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted, or None. Only plain files with plain relative names are allowed."""
    name = ti.name
    kinds = [(ti.issym(), "a symbolic link"), (ti.islnk(), "a hard link"), (ti.isdir(), "a directory entry"),
             (ti.ischr() or ti.isblk(), "a device"), (ti.isfifo(), "a FIFO")]
    for hit, kind in kinds:
        if hit:
            return kind
    if not ti.isreg():
        return f"an unsupported member type {ti.type!r}"
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if "\\" in name or any(ord(c) < 32 for c in name):
        return "a backslash or control character in its name"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a '..', '.' or empty path component"
    if ti.mode & 0o7000:
        return "a setuid/setgid/sticky mode"
    return None


def _open(path: Path, mode: str = "r:gz") -> tarfile.TarFile:
    if not path.is_file():
        raise PackError(f"{path}: no such bundle file; expected a .tar.gz written by lmstack bundle build")
    try:
        return tarfile.open(path, mode)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackError(f"{path}: not a readable gzip tarball ({exc}); expected a bundle from lmstack bundle build") \
            from None


def _members(tf: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    """Every member's header (reading the whole archive), checked for safety before any content is used."""
    try:
        infos = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackError(f"{path}: truncated or corrupt tarball ({exc})") from None
    problems, out = [], {}
    for ti in infos:
        why = _unsafe(ti)
        if why is None and ti.name in out:
            why = "a duplicate name"
        if why is not None:
            problems.append(f"{ti.name!r} is {why}")
        out[ti.name] = ti
    if problems:
        raise PackError(f"{path}: unsafe members, refusing the bundle before extracting anything: "
                        + "; ".join(problems))
    return out


def _parse_manifest(body: bytes, where: Path) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackError(f"{where}: {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PackError(f"{where}: {MANIFEST} is not an {FORMAT} manifest (format: {FORMAT!r} expected)")
    version = doc.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise PackError(f"{where}: {MANIFEST} format_version {version!r}; this lmstack-pack reads 1..{FORMAT_VERSION} "
                        "(upgrade lmstack-pack for newer bundles)")
    members = doc.get("members")
    ok = isinstance(members, list) and all(
        isinstance(m, dict) and isinstance(m.get("path"), str) and isinstance(m.get("bytes"), int)
        and isinstance(m.get("sha256"), str) and len(m["sha256"]) == 64 for m in members)
    if not ok:
        raise PackError(f"{where}: {MANIFEST} members must be a list of {{path, sha256 (64 hex), bytes}}")
    paths = [m["path"] for m in members]
    bad = [p for p in paths if p in (MANIFEST, SIGNATURE) or _unsafe(tar_member(p, 0, 0o644, 0)) is not None]
    if bad or len(set(paths)) != len(paths):
        raise PackError(f"{where}: {MANIFEST} lists unsafe or duplicate paths: {bad or 'duplicates'}")
    return doc


def _read(tf: tarfile.TarFile, ti: tarfile.TarInfo, where: Path) -> bytes:
    if ti.size > _MAX_HEAD_BYTES:
        raise PackError(f"{where}: {ti.name} is {ti.size} bytes; a bundle's {ti.name} is small (corrupt bundle?)")
    f = tf.extractfile(ti)
    assert f is not None  # a regular file: checked by _unsafe
    return f.read()


def _hash_stream(f: IO[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while block := f.read(_CHUNK):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def read_manifest(bundle: str | os.PathLike[str], *, pubkey: str | os.PathLike[str] | None = None) -> BundleInfo:
    """The manifest (and signature) only, read from the head of the tarball without hashing the members; with
    ``pubkey`` the signature must verify. ``verify`` is the full check."""
    path = Path(bundle)
    body = sig = None
    with _open(path, "r|gz") as tf:
        try:
            for ti in tf:
                if ti.name in (MANIFEST, SIGNATURE):
                    if not ti.isreg():
                        raise PackError(f"{path}: {ti.name} is not a regular file")
                    data = _read(tf, ti, path)
                    body, sig = (data, sig) if ti.name == MANIFEST else (body, data)
                    if body is not None and sig is not None:
                        break
                elif body is not None:  # build() writes bundle.json, then bundle.sig, first
                    break
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise PackError(f"{path}: truncated or corrupt tarball ({exc})") from None
    if body is None:
        raise PackError(f"{path}: no {MANIFEST}; expected a bundle from lmstack bundle build")
    manifest = _parse_manifest(body, path)
    signer = check_signature(body, sig, pubkey, str(path)) if pubkey is not None else None
    return BundleInfo(path, manifest, body, sig, signer)


def verify(bundle: str | os.PathLike[str], *, pubkey: str | os.PathLike[str] | None = None) -> BundleInfo:
    """Check a bundle: safe members only, then every member's sha256 and size against bundle.json, no member
    missing or extra; with ``pubkey`` bundle.sig must verify. A PackError lists every problem, naming members."""
    path = Path(bundle)
    with _open(path) as tf:
        members = _members(tf, path)
        if MANIFEST not in members:
            raise PackError(f"{path}: no {MANIFEST}; expected a bundle from lmstack bundle build")
        body = _read(tf, members[MANIFEST], path)
        manifest = _parse_manifest(body, path)
        sig = _read(tf, members[SIGNATURE], path) if SIGNATURE in members else None
        signer = check_signature(body, sig, pubkey, str(path)) if pubkey is not None else None
        expected = {m["path"]: m for m in manifest["members"]}
        problems = [f"{name}: listed in {MANIFEST} but missing from the tarball"
                    for name in sorted(set(expected) - set(members))]
        for name, ti in sorted(members.items()):
            if name in (MANIFEST, SIGNATURE):
                continue
            if name not in expected:
                problems.append(f"{name}: extra member, not listed in {MANIFEST}")
                continue
            f = tf.extractfile(ti)
            assert f is not None
            try:
                sha, size = _hash_stream(f)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise PackError(f"{path}: truncated or corrupt at {name} ({exc})") from None
            want = expected[name]
            if size != want["bytes"] or sha != want["sha256"]:
                problems.append(f"{name}: changed (sha256 {sha[:16]}..., {size} bytes; {MANIFEST} says "
                                f"{want['sha256'][:16]}..., {want['bytes']} bytes)")
    if problems:
        raise PackError(f"{path}: the bundle does not match its manifest: " + "; ".join(problems))
    return BundleInfo(path, manifest, body, sig, signer)


def _check_tree(root: Path, info: BundleInfo) -> list[str]:
    """Problems with an extracted tree: what is on disk must be exactly the manifest's members, hashes equal."""
    want = {m["path"]: m for m in info.manifest["members"]}
    found = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if not p.is_dir()}
    problems = [f"{n}: not extracted" for n in sorted(set(want) - set(found))]
    for name, p in sorted(found.items()):
        if name == MANIFEST:
            if p.read_bytes() != info.manifest_bytes:
                problems.append(f"{name}: differs from the verified manifest (bundle replaced during unpack?)")
        elif name == SIGNATURE and info.signature is not None:
            continue
        elif name not in want or p.is_symlink():
            problems.append(f"{name}: unexpected file after extraction")
        elif file_sha256(p) != (want[name]["sha256"], want[name]["bytes"]):
            problems.append(f"{name}: extracted content does not match {MANIFEST}")
    return problems


def unpack(bundle: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
           pubkey: str | os.PathLike[str] | None = None) -> BundleInfo:
    """Verify ``bundle`` (see :func:`verify`), extract it into a temporary sibling of ``out_dir``, check the
    extracted files against the manifest, then rename into place. ``out_dir`` must not exist yet."""
    out = Path(out_dir)
    if out.exists():
        raise PackError(f"{out} already exists; unpack writes a new directory (choose another -o, or remove it)")
    info = verify(bundle, pubkey=pubkey)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with _open(info.path) as tf:
            for ti in _members(tf, info.path).values():  # checked again: the file may have changed since verify
                _extract(tf, ti, tmp)
        problems = _check_tree(tmp, info)
        if problems:
            raise PackError(f"{info.path}: " + "; ".join(problems))
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _extract(tf: tarfile.TarFile, ti: tarfile.TarInfo, root: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python 3.12, 3.11.4+, 3.10.12+: PEP 706
        tf.extract(ti, root, filter="data")
        return
    dest = root / ti.name  # the name was checked by _unsafe: relative, no '..', a regular file
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = tf.extractfile(ti)
    assert src is not None
    with open(dest, "xb") as f:
        shutil.copyfileobj(src, f, _CHUNK)
    os.chmod(dest, 0o755 if ti.mode & 0o100 else 0o644)
