"""File plumbing: streaming sha256, durable copies, directory fsync, UTC timestamps, temp names gc can judge.

Temp files and directories are named ``.<stem>.<pid>.<random>.tmp`` in the directory of their target, so a
rename is atomic (same file system) and ``gc`` can tell an abandoned temp (its process is gone) from one that a
running writer still owns.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

BLOCK = 1 << 20  # hash and copy in 1 MiB blocks: constant memory for multi-GB shards
_TMP = re.compile(r"^\..*\.(\d+)\.[0-9a-f]{8}\.tmp$")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    """UTC ISO 8601 with microseconds and a ``Z`` (sorts as text in time order)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def tmp_path(target: Path) -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def remove_path(p: Path) -> None:
    """Remove a file, a link or a directory tree."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def tmp_owner_alive(path: Path) -> bool:
    """Whether the process that created temp ``path`` still runs (True for names this module did not make)."""
    m = _TMP.match(path.name)
    if m is None:
        return True
    pid = int(m.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_tmp(path: Path) -> bool:
    return _TMP.match(path.name) is not None


def copy_hashing(src: Path, dst: Path, on_block: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``src`` to the new file ``dst`` (fsynced), returning (sha256 hex, size) of the bytes written.

    ``on_block(n)`` is called after each block (tests use it to interrupt a copy half-way)."""
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(BLOCK):
            fo.write(block)
            h.update(block)
            size += len(block)
            if on_block is not None:
                on_block(len(block))
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest(), size


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)
