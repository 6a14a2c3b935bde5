"""The SQLite index: models, versions (with their stage), files, aliases, signatures and the event log.

Manifests and blobs on disk are the content; this index is what makes lookups, stage rules and concurrent
writers safe. WAL mode lets readers proceed while one writer commits (https://sqlite.org/wal.html); every write
is one ``BEGIN IMMEDIATE`` transaction, which takes the write lock up front, so two processes allocating a
version number serialize instead of both reading the same maximum. The event log is append-only: triggers
refuse UPDATE and DELETE on it. ``schema_version`` holds the schema's version; older ones are upgraded by the
functions in ``MIGRATIONS`` (from-version -> SQL), a newer one is refused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from specs.io import open_sqlite

SCHEMA_VERSION = 1
STAGES = ("none", "staging", "production", "archived")

_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE models (
  name TEXT PRIMARY KEY,
  created_at TEXT NOT NULL,
  creator TEXT NOT NULL
);
CREATE TABLE versions (
  model TEXT NOT NULL REFERENCES models(name),
  version INTEGER NOT NULL CHECK (version > 0),
  digest TEXT NOT NULL,
  content_digest TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('file', 'directory')),
  size INTEGER NOT NULL,
  stage TEXT NOT NULL DEFAULT 'none' CHECK (stage IN ({", ".join(f"'{s}'" for s in STAGES)})),
  parent INTEGER,
  creator TEXT NOT NULL,
  created_at TEXT NOT NULL,
  deleted_at TEXT,
  PRIMARY KEY (model, version)
);
CREATE INDEX versions_stage ON versions (model, stage);
CREATE TABLE files (
  model TEXT NOT NULL,
  version INTEGER NOT NULL,
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  PRIMARY KEY (model, version, path),
  FOREIGN KEY (model, version) REFERENCES versions (model, version)
);
CREATE INDEX files_sha256 ON files (sha256);
CREATE TABLE aliases (
  model TEXT NOT NULL,
  alias TEXT NOT NULL,
  version INTEGER NOT NULL,
  PRIMARY KEY (model, alias),
  FOREIGN KEY (model, version) REFERENCES versions (model, version)
);
CREATE TABLE signatures (
  model TEXT NOT NULL,
  version INTEGER NOT NULL,
  keyid TEXT NOT NULL,
  signed_at TEXT NOT NULL,
  PRIMARY KEY (model, version, keyid)
);
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time TEXT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  model TEXT,
  version INTEGER,
  details TEXT NOT NULL
);
CREATE INDEX events_model ON events (model, id);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});
"""

# from-version -> SQL that upgrades to from-version + 1 (none yet: 1 is the first schema)
MIGRATIONS: dict[int, str] = {}


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the index at ``path``."""
    conn = open_sqlite(path, autocommit=True)  # WAL; transactions are explicit (BEGIN IMMEDIATE)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=FULL")  # a committed version survives a power cut, as its blobs do
    with transaction(conn):
        have = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        if have is None:
            for statement in _split(_SCHEMA):
                conn.execute(statement)
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RegistryError(f"{path} has index schema {version}, newer than this lmstack-registry supports "
                                f"({SCHEMA_VERSION}); upgrade lmstack-registry")
        while version < SCHEMA_VERSION:
            for statement in _split(MIGRATIONS[version]):
                conn.execute(statement)
            version += 1
            conn.execute("UPDATE schema_version SET version = ?", (version,))
    return conn


def _split(script: str) -> list[str]:
    # executescript would COMMIT the open transaction first; statements are run one by one inside it instead
    out, cur = [], []
    for line in script.strip().splitlines():
        cur.append(line)
        if line.rstrip().endswith(";") and (not line.startswith("CREATE TRIGGER") or line.rstrip().endswith("END;")):
            out.append("\n".join(cur).rstrip().rstrip(";"))
            cur = []
    return out


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def log_event(conn: sqlite3.Connection, time: str, actor: str, action: str, model: str | None,
              version: int | None, details: dict[str, Any]) -> None:
    conn.execute("INSERT INTO events (time, actor, action, model, version, details) VALUES (?, ?, ?, ?, ?, ?)",
                 (time, actor, action, model, version, json.dumps(details, sort_keys=True)))
