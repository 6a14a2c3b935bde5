"""The registry's storage half: registering versions and reading them back, on a content-addressed store.

``Registry`` (:mod:`registry.lifecycle`) is a local model registry in the manner of MLflow's Model Registry.

Layout under ``root``: ``index.db`` (SQLite, :mod:`registry.index`), ``blobs/sha256/<hex>``
(:mod:`registry.blobs`), ``models/<name>/<version>/manifest.json`` and, once signed, ``manifest.dsse.json`` beside
it (:mod:`registry.signing`), ``trusted/<keyid>.pub.pem`` (keys the signature gate accepts by default).
Blobs are written before the index transaction, so a crash leaves at worst unreferenced blobs, which ``gc``
removes; a version becomes visible only when its transaction commits, after its manifest file is durable.
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from registry._io import iso, utc_now
from registry.blobs import BlobStore
from registry.checkout import materialize, rehash
from registry.errors import IntegrityError, NotFoundError
from registry.index import STAGES, connect, log_event, transaction
from registry.manifest import (
    FileEntry,
    ModelVersion,
    build_manifest,
    canonical,
    check_metadata,
    check_name,
    check_tags,
    content_doc,
    entries,
    parse_manifest,
    scan,
    sha256_digest,
)
from specs.errors import suggest
from specs.io import atomic_write_bytes

log = logging.getLogger("registry")
_VERSION_REF = re.compile(r"^v?(\d+)$")
RESERVED_REFS = ("latest", *STAGES)


def default_actor() -> str:
    """``$LMSTACK_ACTOR``, else the login name."""
    try:
        return os.environ.get("LMSTACK_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class Event:
    id: int
    time: str
    actor: str
    action: str
    model: str | None
    version: int | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    created_at: str
    versions: int
    latest: int | None
    production: int | None
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GcResult:
    bytes_freed: int
    blobs_removed: int
    temp_files_removed: int
    checkouts_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Store:
    """Registering and reading versions; :class:`registry.lifecycle.Registry` adds stages, aliases, signatures,
    retention and gc. ``root`` is created on first use unless ``create=False``; ``clock`` returns the current UTC
    time (tests pass a fixed one). One instance per process and thread: each opens its own SQLite connection."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True,
                 clock: Callable[[], datetime] = utc_now):
        self.root = Path(root)
        if not (self.root / "index.db").is_file() and not create:
            raise NotFoundError(f"no registry at {self.root} (no index.db); register a model to create one")
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root)
        self.clock = clock
        self._conn: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.root / "index.db")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dir(self, name: str, version: int) -> Path:
        return self.root / "models" / name / str(version)

    def _event(self, actor: str | None, action: str, model: str | None, version: int | None, **details: Any) -> None:
        log_event(self.db, iso(self.clock()), actor or default_actor(), action, model, version, details)

    # ---- registering -------------------------------------------------------------------------------------------
    def register(self, name: str, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None,
                 tags: Iterable[str] = (), parent: int | str | None = None, actor: str | None = None,
                 exclude: Iterable[str] = ()) -> ModelVersion:
        """Store the file or directory ``path`` as the next version of ``name`` (1, 2, ...). When its content
        (files, metadata, tags) equals the latest version's and ``parent`` does not say otherwise, that version is
        returned with ``reused=True`` and nothing is written. ``parent`` (a ref) records lineage. ``exclude``:
        shell patterns (``fnmatch``, ``*`` crossing ``/``) of relative paths a directory's version leaves out, e.g.
        ``logs/*``. An lmstack checkpoint's modelcard.json lists its files and loading verifies them, so leaving
        any out makes it unloadable: register a ``save_pretrained`` directory for the model alone."""
        check_name(name)
        meta, tag_list, src = check_metadata(metadata), check_tags(tags), Path(path)
        kind, listing = scan(src)
        patterns = list(exclude)
        if patterns:
            listing = [(rel, p) for rel, p in listing if not any(fnmatch.fnmatchcase(rel, pat) for pat in patterns)]
            if not listing:
                raise ValueError(f"cannot register {src}: every file matches the exclude patterns {patterns}")
        sources = dict(listing)
        files = []
        for rel, p in sorted(listing):
            digest, size = self.blobs.put(p)
            files.append(FileEntry(rel, size, digest))
        content = sha256_digest(canonical(content_doc(kind, files, meta, tag_list)))
        actor = actor or default_actor()
        with transaction(self.db):
            if self.db.execute("SELECT 1 FROM models WHERE name=?", (name,)).fetchone() is None:
                self.db.execute("INSERT INTO models VALUES (?, ?, ?)", (name, iso(self.clock()), actor))
                self._event(actor, "model.create", name, None)
            parent_v = None if parent is None else self._parent(name, parent)
            latest = self.db.execute("SELECT version, content_digest, parent FROM versions WHERE model=? AND "
                                     "deleted_at IS NULL ORDER BY version DESC LIMIT 1", (name,)).fetchone()
            if latest is not None and latest["content_digest"] == content and parent_v in (None, latest["parent"]):
                log.info("%s: content identical to version %d; not registering a duplicate", name, latest[0])
                found = self._load(name, latest["version"])
                return ModelVersion(**{**found.__dict__, "reused": True})
            for f in files:  # a concurrent gc may have removed a blob we found present, before we held the lock
                if not self.blobs.has(f.sha256):
                    self.blobs.put(sources[f.path])
            version = self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model=?",
                                      (name,)).fetchone()[0]
            pdigest = None if parent_v is None else self.db.execute(
                "SELECT digest FROM versions WHERE model=? AND version=?", (name, parent_v)).fetchone()[0]
            created = iso(self.clock())
            doc = build_manifest(name=name, version=version, kind=kind, files=files, metadata=meta, tags=tag_list,
                                 creator=actor, created_at=created,
                                 parent=None if parent_v is None else (parent_v, pdigest))
            body = canonical(doc)
            digest = sha256_digest(body)
            atomic_write_bytes(self._dir(name, version) / "manifest.json", body, 0o444)
            self.db.execute("INSERT INTO versions (model, version, digest, content_digest, kind, size, parent, "
                            "creator, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (name, version, digest, content, kind, doc["size"], parent_v, actor, created))
            self.db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                                [(name, version, f.path, f.sha256, f.size) for f in files])
            self._event(actor, "version.register", name, version, digest=digest, files=len(files), size=doc["size"],
                        source=str(src.absolute()), parent=parent_v)
        return self._load(name, version)

    # ---- reading -----------------------------------------------------------------------------------------------
    def _known_models(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM models ORDER BY name")]

    def _require_model(self, name: str) -> None:
        if self.db.execute("SELECT 1 FROM models WHERE name=?", (name,)).fetchone() is None:
            known = self._known_models()
            raise NotFoundError(f"unknown model {name!r}; known models: {', '.join(known) or '(none registered)'}")

    def _resolve(self, name: str, ref: int | str) -> int:
        """The live version number ``ref`` names: a number (``3`` or ``"v3"``), ``latest``, a stage or an alias."""
        self._require_model(name)
        live = [r[0] for r in self.db.execute(
            "SELECT version FROM versions WHERE model=? AND deleted_at IS NULL ORDER BY version", (name,))]
        m = _VERSION_REF.match(str(ref)) if not isinstance(ref, bool) else None
        if m is not None:
            v = int(m.group(1))
            if v in live:
                return v
            row = self.db.execute("SELECT deleted_at FROM versions WHERE model=? AND version=?", (name, v)).fetchone()
            if row is not None:
                raise NotFoundError(f"version {v} of {name!r} was deleted at {row[0]}")
            raise NotFoundError(f"{name!r} has no version {v}; live versions: {', '.join(map(str, live)) or 'none'}")
        if ref == "latest":
            if not live:
                raise NotFoundError(f"{name!r} has no live versions")
            return live[-1]
        if ref in STAGES:
            row = self.db.execute("SELECT MAX(version) FROM versions WHERE model=? AND stage=? AND deleted_at IS NULL",
                                  (name, ref)).fetchone()
            if row[0] is None:
                raise NotFoundError(f"no version of {name!r} is in stage {ref!r}")
            return row[0]
        row = self.db.execute("SELECT version FROM aliases WHERE model=? AND alias=?", (name, ref)).fetchone()
        if row is not None:
            return row[0]
        aliases = [r[0] for r in self.db.execute("SELECT alias FROM aliases WHERE model=? ORDER BY alias", (name,))]
        raise NotFoundError(f"unknown ref {ref!r} for {name!r}{suggest(str(ref), [*RESERVED_REFS, *aliases])}: "
                            f"expected a version number, 'latest', a stage "
                            f"({', '.join(STAGES)}) or an alias ({', '.join(aliases) or 'none set'})")

    def _parent(self, name: str, ref: int | str) -> int:
        """A parent may be a deleted version: lineage records what existed when this version was made."""
        m = _VERSION_REF.match(str(ref))
        if m is not None and self.db.execute("SELECT 1 FROM versions WHERE model=? AND version=?",
                                             (name, int(m.group(1)))).fetchone() is not None:
            return int(m.group(1))
        return self._resolve(name, ref)

    def _manifest_bytes(self, name: str, version: int) -> bytes:
        """The manifest file's bytes, checked against the digest the index recorded at registration."""
        want = self.db.execute("SELECT digest FROM versions WHERE model=? AND version=?", (name, version)).fetchone()[0]
        path = self._dir(name, version) / "manifest.json"
        if not path.is_file():
            raise IntegrityError(f"{name} v{version}: manifest {path} is missing")
        body = path.read_bytes()
        got = sha256_digest(body)
        if got != want:
            raise IntegrityError(f"{name} v{version}: manifest {path} was modified: expected {want}, found {got}")
        return body

    def _load(self, name: str, version: int) -> ModelVersion:
        row = self.db.execute("SELECT * FROM versions WHERE model=? AND version=?", (name, version)).fetchone()
        doc = parse_manifest(self._manifest_bytes(name, version))
        aliases = tuple(r[0] for r in self.db.execute(
            "SELECT alias FROM aliases WHERE model=? AND version=? ORDER BY alias", (name, version)))
        signed = tuple(r[0] for r in self.db.execute(
            "SELECT keyid FROM signatures WHERE model=? AND version=? ORDER BY keyid", (name, version)))
        return ModelVersion(name=name, version=version, digest=row["digest"], content_digest=row["content_digest"],
                            kind=row["kind"], files=entries(doc), size=row["size"], metadata=doc["metadata"],
                            tags=tuple(doc["tags"]), creator=row["creator"], created_at=row["created_at"],
                            parent=row["parent"], stage=row["stage"], aliases=aliases, signed_by=signed,
                            deleted_at=row["deleted_at"])

    def get(self, name: str, ref: int | str = "latest") -> ModelVersion:
        """The version ``ref`` names (a number, ``"latest"``, a stage such as ``"production"``, or an alias)."""
        return self._load(name, self._resolve(name, ref))

    def list_models(self) -> list[ModelInfo]:
        out = []
        for m in self.db.execute("SELECT * FROM models ORDER BY name").fetchall():
            live = [r[0] for r in self.db.execute(
                "SELECT version FROM versions WHERE model=? AND deleted_at IS NULL ORDER BY version", (m["name"],))]
            prod = self.db.execute("SELECT MAX(version) FROM versions WHERE model=? AND stage='production' AND "
                                   "deleted_at IS NULL", (m["name"],)).fetchone()[0]
            aliases = dict(self.db.execute("SELECT alias, version FROM aliases WHERE model=? ORDER BY alias",
                                           (m["name"],)).fetchall())
            out.append(ModelInfo(m["name"], m["created_at"], len(live), live[-1] if live else None, prod, aliases))
        return out

    def list_versions(self, name: str, *, include_deleted: bool = False) -> list[ModelVersion]:
        self._require_model(name)
        rows = self.db.execute("SELECT version FROM versions WHERE model=?" + (
            "" if include_deleted else " AND deleted_at IS NULL") + " ORDER BY version", (name,)).fetchall()
        return [self._load(name, r[0]) for r in rows]

    def checkout(self, name: str, ref: int | str, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Rebuild version ``ref`` at ``dest`` (the file's or the directory's own path), every file's sha256
        verified; an existing non-empty ``dest`` is refused unless ``overwrite``."""
        v = self.get(name, ref)
        return materialize(self.blobs, v.kind, v.files, Path(dest), overwrite=overwrite, where=f"{name} v{v.version}")

    def verify(self, name: str, ref: int | str = "latest") -> ModelVersion:
        """Re-hash the manifest and every blob of version ``ref``; an IntegrityError lists all that differ."""
        v = self.get(name, ref)
        indexed = {(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT path, size, sha256 FROM files WHERE model=? AND version=?", (name, v.version))}
        problems = [] if indexed == {(f.path, f.size, f.sha256) for f in v.files} else [
            "the manifest's file list differs from the index's"]
        problems += rehash(self.blobs, v.files)
        if problems:
            raise IntegrityError(f"{name} v{v.version}: " + "; ".join(problems))
        return v

    def history(self, name: str | None = None) -> list[Event]:
        """The event log in order (of one model, or of the whole registry)."""
        if name is not None:
            self._require_model(name)
        rows = self.db.execute("SELECT * FROM events" + ("" if name is None else " WHERE model=?") + " ORDER BY id",
                               () if name is None else (name,)).fetchall()
        return [Event(r["id"], r["time"], r["actor"], r["action"], r["model"], r["version"], json.loads(r["details"]))
                for r in rows]
