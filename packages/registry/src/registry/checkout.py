"""Rebuilding a version from its blobs, verifying each file's sha256 as it is copied.

The tree is assembled in a temp directory beside ``dest`` and renamed into place, so ``dest`` is either absent
(or as it was) or complete; a blob whose bytes do not hash to the manifest's digest aborts the checkout with an
IntegrityError naming the file and both digests, and nothing is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from registry._io import copy_hashing, fsync_dir, remove_path, tmp_path
from registry.blobs import BlobStore
from registry.errors import IntegrityError, RegistryError
from registry.manifest import FileEntry, safe_relpath
from specs.modelcard import sha256_file


def _copy_verified(blobs: BlobStore, f: FileEntry, out: Path, where: str) -> None:
    src = blobs.path(f.sha256)
    if not src.is_file():
        raise IntegrityError(f"{where}: blob for {f.path!r} is missing ({src}); expected sha256 {f.sha256}")
    got, _ = copy_hashing(src, out)
    if got != f.sha256:
        raise IntegrityError(f"{where}: {f.path!r} is corrupted: expected sha256 {f.sha256}, blob {src.name[:16]}... "
                             f"holds bytes with sha256 {got}")


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        if not overwrite:
            raise RegistryError(f"checkout destination {dest} exists; pass overwrite=True (--force) to replace it")
    elif dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise RegistryError(f"checkout destination {dest} is a non-empty directory; pass overwrite=True (--force) "
                            "to replace it")


def materialize(blobs: BlobStore, kind: str, files: Sequence[FileEntry], dest: Path, *, overwrite: bool,
                where: str) -> Path:
    """Write the version's file (``kind == "file"``) or directory tree at ``dest``; see the module docstring."""
    dest = Path(dest).absolute()
    _check_dest(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(dest)
    try:
        if kind == "file":
            _copy_verified(blobs, files[0], tmp, where)
        else:
            tmp.mkdir()
            for f in files:
                out = tmp.joinpath(*safe_relpath(f.path).parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                _copy_verified(blobs, f, out, where)
        if dest.exists() or dest.is_symlink():
            # the old dest moves aside first: rename cannot replace a non-empty directory
            old = tmp_path(dest)
            os.rename(dest, old)
            os.rename(tmp, dest)
            remove_path(old)
        else:
            os.rename(tmp, dest)
    except BaseException:
        if tmp.exists():
            remove_path(tmp)
        raise
    fsync_dir(dest.parent)
    return dest


def rehash(blobs: BlobStore, files: Sequence[FileEntry]) -> list[str]:
    """Problems found re-hashing every blob ``files`` reference (empty when all match)."""
    problems = []
    for f in files:
        p = blobs.path(f.sha256)
        if not p.is_file():
            problems.append(f"{f.path!r}: blob missing (expected sha256 {f.sha256})")
            continue
        got = sha256_file(p)
        if got != f.sha256:
            problems.append(f"{f.path!r}: expected sha256 {f.sha256}, blob holds {got}")
    return problems
