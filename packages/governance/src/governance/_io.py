"""File plumbing shared by the governance commands: atomic writes, streaming digests, input checks.

Every artifact governance writes goes through :func:`write_atomic` (temp file in the same directory, fsync,
``os.replace``), so a crash or a bad input never leaves half a file behind, and readers see either the old
file or the new one. Digests stream in 1 MiB blocks so multi-GB model files hash in constant memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from specs.errors import ConfigError
from specs.io import atomic_write_bytes

_BLOCK = 1 << 20


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file and rename; ``mode`` is applied before the rename.

    Release files default to 0644 (readable by the image or web server that publishes them); private keys pass
    0600, and since the temp file is created 0600 the key is never readable by others, even for a moment. A path
    that is a directory or cannot be written is a ConfigError naming it (``specs.io.atomic_write_bytes``).
    """
    return atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data, mode)


def digests(path: str | os.PathLike[str], algorithms: Iterable[str] = ("sha1", "sha256")) -> dict[str, str]:
    """Hex digests of a file's bytes for each hashlib algorithm name, in one streaming pass."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            for h in hashers.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashers.items()}


def sha256_file(path: str | os.PathLike[str]) -> str:
    return digests(path, ("sha256",))["sha256"]


def existing_files(paths: Iterable[str | os.PathLike[str]], what: str = "artifact") -> list[Path]:
    """The given paths as Paths, or a ConfigError naming every one that is missing or not a regular file."""
    out, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            raise ConfigError(what, f"{p} is a directory; expected a file")
        (out if p.is_file() else missing).append(p)
    if missing:
        listing = ", ".join(str(m) for m in missing)
        raise ConfigError(what, f"file not found: {listing}" if len(missing) == 1 else f"files not found: {listing}")
    return out


def rel_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` with '/' separators (``../x`` when it lies outside ``base``).

    Checksum files, SBOM file names and receipt subjects name artifacts relative to the directory they are
    published in, so ``cd artifacts && sha256sum -c CHECKSUMS.sha256`` works after the directory is moved.
    """
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
