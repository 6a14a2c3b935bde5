"""The content-addressed blob store: ``<root>/blobs/sha256/<hex>``, one file per distinct content.

Laid out as an OCI image layout's ``blobs/`` directory (https://github.com/opencontainers/image-spec/blob/main/
image-layout.md). A blob is written to a temp file beside its final name, fsynced and renamed, so a reader sees
a whole blob or none; a blob already present is not written again, which is what deduplicates versions that
share files. Blobs are never modified in place; ``gc`` removes the ones no live version references.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from registry._io import copy_hashing, fsync_dir, is_tmp, tmp_path
from registry.errors import IntegrityError
from specs.modelcard import sha256_file

_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path):
        self.dir = Path(root) / "blobs" / "sha256"

    def path(self, hexdigest: str) -> Path:
        if not _HEX.match(hexdigest):
            raise ValueError(f"bad sha256 {hexdigest!r}: expected 64 lowercase hex digits")
        return self.dir / hexdigest

    def has(self, hexdigest: str) -> bool:
        return self.path(hexdigest).is_file()

    def put(self, src: Path, on_block: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Store the bytes of file ``src``; return (sha256 hex, size). Reads ``src`` once when the content is
        already stored, twice when it is new (hash, then copy and hash again: a file that changed in between is
        an IntegrityError rather than a blob stored under the wrong name)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(src)
        final = self.path(digest)
        if final.is_file():
            return digest, final.stat().st_size
        tmp = tmp_path(final)
        try:
            copied, size = copy_hashing(src, tmp, on_block)
            if copied != digest:
                raise IntegrityError(f"{src} changed while it was being registered (sha256 {digest} when hashed, "
                                     f"{copied} when copied)")
            os.chmod(tmp, 0o444)  # blobs are immutable; a read-only mode catches accidental writes
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)
        return digest, size

    def blobs(self) -> Iterator[tuple[str, Path]]:
        """(hex, path) of every complete blob."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if _HEX.match(p.name):
                    yield p.name, p

    def temps(self) -> Iterator[Path]:
        """Temp files of writes in progress or abandoned."""
        if self.dir.is_dir():
            yield from (p for p in self.dir.iterdir() if is_tmp(p))

    def remove(self, path: Path) -> int:
        """Unlink ``path``; return the bytes freed (0 when it was already gone)."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size
