"""Version manifests: what a registered artifact is, as canonical JSON whose sha256 is the version's digest.

Follows the OCI image manifest's idea (https://github.com/opencontainers/image-spec/blob/main/manifest.md): a
small JSON document lists every content blob by digest and size, and the document's own digest identifies the
whole. Canonical bytes are ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8
with files sorted by path, so the same content always gives the same bytes whatever order the file system
listed it in. ``content_digest`` covers only what was registered (kind, files, metadata, tags): two
registrations of the same checkpoint share it, while their manifests (name, version, creator, time) differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MEDIA_TYPE = "application/vnd.lmstack.manifest+json"
MANIFEST_SCHEMA = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_RE = re.compile(r"^[^\x00-\x1f]{1,128}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: POSIX path relative to the artifact root (the file's name for a single file)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ModelVersion:
    """A registered version as the index and its manifest describe it.

    ``reused`` is True when ``register`` found this content already at the latest version and returned it."""

    name: str
    version: int
    digest: str
    content_digest: str
    kind: str
    files: tuple[FileEntry, ...]
    size: int
    metadata: Mapping[str, Any]
    tags: tuple[str, ...]
    creator: str
    created_at: str
    parent: int | None
    stage: str = "none"
    aliases: tuple[str, ...] = ()
    signed_by: tuple[str, ...] = ()
    deleted_at: str | None = None
    reused: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "digest": self.digest,
                "content_digest": self.content_digest, "kind": self.kind, "size": self.size,
                "files": [f.to_dict() for f in self.files], "metadata": dict(self.metadata), "tags": list(self.tags),
                "creator": self.creator, "created_at": self.created_at, "parent": self.parent, "stage": self.stage,
                "aliases": list(self.aliases), "signed_by": list(self.signed_by), "deleted_at": self.deleted_at,
                "reused": self.reused}


def check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"bad {what} {name!r}: expected 1-128 characters of letters, digits, '.', '_', '-', "
                         "starting with a letter or digit")
    return name


def canonical(doc: Any) -> bytes:
    """The canonical JSON bytes of ``doc``; NaN, infinities and non-JSON values are a ValueError."""
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not representable as canonical JSON: {exc}") from None


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def scan(path: Path) -> tuple[str, list[tuple[str, Path]]]:
    """``(kind, [(relative posix path, file path), ...])`` for a file or a directory tree.

    File symlinks are followed (their content is registered); a symlink to a directory is refused, since
    following it could register files outside the artifact or loop forever."""
    if path.is_file():
        return "file", [(path.name, path)]
    if not path.is_dir():
        raise ValueError(f"cannot register {path}: no such file or directory")
    out: list[tuple[str, Path]] = []
    for top, dirs, files in os.walk(path, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                raise ValueError(f"cannot register {path}: {os.path.join(top, d)} is a symlink to a directory")
        for f in files:
            p = Path(top, f)
            if not p.is_file():
                raise ValueError(f"cannot register {path}: {p} is not a regular file (broken link, socket, fifo?)")
            out.append((p.relative_to(path).as_posix(), p))
    return "directory", out


def safe_relpath(rel: str) -> PurePosixPath:
    """A manifest path as a relative path that cannot leave the checkout directory."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise ValueError(f"manifest path {rel!r} is not a plain relative path")
    return p


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ValueError(f"metadata must be a JSON object with string keys, got {type(metadata).__name__}")
    doc = dict(metadata)
    canonical(doc)
    return doc


def check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise ValueError(f"tags must be a list of strings, got the string {tags!r}")
    out = sorted(set(tags))
    for t in out:
        if not isinstance(t, str) or not TAG_RE.match(t):
            raise ValueError(f"bad tag {t!r}: expected 1-128 printable characters")
    return out


def content_doc(kind: str, files: Sequence[FileEntry], metadata: Mapping[str, Any], tags: Iterable[str]) -> dict:
    return {"kind": kind, "files": [f.to_dict() for f in sorted(files, key=lambda f: f.path)],
            "metadata": dict(metadata), "tags": sorted(set(tags))}


def build_manifest(*, name: str, version: int, kind: str, files: Sequence[FileEntry],
                   metadata: Mapping[str, Any], tags: Iterable[str], creator: str, created_at: str,
                   parent: tuple[int, str] | None) -> dict[str, Any]:
    """The manifest document (see the module docstring); ``parent`` is (version, digest) or None."""
    content = content_doc(kind, files, metadata, tags)
    return {"schemaVersion": MANIFEST_SCHEMA, "mediaType": MEDIA_TYPE, "name": name, "version": version,
            **content, "size": sum(f.size for f in files), "content_digest": sha256_digest(canonical(content)),
            "creator": creator, "created_at": created_at,
            "parent": None if parent is None else {"version": parent[0], "digest": parent[1]}}


def parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("mediaType") != MEDIA_TYPE:
        raise ValueError(f"not an lmstack manifest (mediaType {MEDIA_TYPE!r} expected)")
    return doc


def entries(doc: Mapping[str, Any]) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in doc["files"])


def lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; a key that itself holds a dot (``{"eval.ppl": 3}``) is found first."""
    if dotted in doc:
        return doc[dotted]
    head, _, rest = dotted.partition(".")
    if rest and isinstance(doc.get(head), Mapping):
        return lookup(doc[head], rest)
    raise KeyError(dotted)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
