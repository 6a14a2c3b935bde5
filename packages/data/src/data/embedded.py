"""The embedded corpus: text every machine with Python already has (the standard library's source and docs).

``build_dataloader("embedded")`` and ``python -m corpus.cli build`` with no ``--input`` use it, so examples and
tests need no downloads. The selection is deterministic: ``pydoc_data/topics.py`` (the language reference
text behind ``help()``) first, then ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (tests and
site-packages excluded) in the order of the sha256 of their relative path (a fixed pseudo-random spread over
the library), until ``budget_bytes`` is reached; the chosen files are returned sorted by path. The same Python
version gives the same files and therefore the same shards. Licensed PSF-2.0.

data owns this (corpus imports data, never the reverse), and :func:`embedded_shards` caches plain tokenized
shards under ``~/.cache/lmstack/embedded/<key>``; corpus runs its full curation over :func:`embedded_files`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.manifest import FORMAT_VERSION, MANIFEST
from specs.errors import ConfigError

DEFAULT_BUDGET_BYTES = 8 << 20
LICENSE = "PSF-2.0"
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
_DOCS = "pydoc_data/topics.py"


@dataclass(frozen=True, kw_only=True)
class EmbeddedFile:
    path: Path
    relpath: str
    size: int


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def embedded_files(budget_bytes: int = DEFAULT_BUDGET_BYTES, *, root: Path | None = None) -> list[EmbeddedFile]:
    """The deterministic selection described in the module docstring, sorted by relative path."""
    if budget_bytes <= 0:
        raise ConfigError("budget_bytes", f"must be positive, got {budget_bytes}")
    root = root or stdlib_root()
    found: list[EmbeddedFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith("."))
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                found.append(EmbeddedFile(path=p, relpath=p.relative_to(root).as_posix(), size=p.stat().st_size))
    if not found:
        raise ConfigError("embedded", f"no Python source files under {root}; pass an input directory instead")
    order = sorted(found, key=lambda f: (f.relpath != _DOCS, hashlib.sha256(f.relpath.encode()).hexdigest()))
    chosen, total = [], 0
    for f in order:
        if chosen and total + f.size > budget_bytes:
            continue
        chosen.append(f)
        total += f.size
    return sorted(chosen, key=lambda f: f.relpath)


def read_embedded(files: list[EmbeddedFile]) -> Iterator[tuple[EmbeddedFile, str]]:
    """(file, text) for each file that decodes as UTF-8 (the stdlib's sources all do)."""
    for f in files:
        try:
            yield f, f.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def default_cache_dir() -> Path:
    base = os.environ.get("LMSTACK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "lmstack")
    return Path(base) / "embedded"


def embedded_shards(tokenizer: Any = "byte", *, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                    cache_dir: str | os.PathLike[str] | None = None, shard_size_tokens: int = 1 << 20) -> Path:
    """Shard directory of the embedded corpus for ``tokenizer`` (a spec or object), built once and reused.

    The cache key covers the format version, the tokenizer (spec for trained ones, else fingerprint), the
    budget and every chosen file's path and content hash. A file lock makes concurrent ranks build it once.
    """
    from data.build import build_shards
    from data.tokenizer.loading import TRAINED_KINDS, load_tokenizer

    files = embedded_files(budget_bytes)
    digest = hashlib.sha256()
    for f, text in read_embedded(files):
        digest.update(f"{f.relpath}\0{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    trained = isinstance(tokenizer, str) and tokenizer.partition(":")[0] in TRAINED_KINDS
    tok = None if trained else load_tokenizer(tokenizer)
    key_doc = {"format_version": FORMAT_VERSION, "tokenizer": tokenizer if trained else tok.fingerprint(),
               "budget": budget_bytes, "files": digest.hexdigest(), "shard_size_tokens": shard_size_tokens,
               "python": sys.version.split()[0]}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / key
    if (out / MANIFEST).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if (out / MANIFEST).is_file():  # another process built it while we waited
            return out
        if tok is None:
            tok = load_tokenizer(tokenizer, texts=(t for _, t in read_embedded(files)))
        sources = [{"name": f"python-stdlib/{f.relpath}", "sha256": hashlib.sha256(t.encode()).hexdigest(),
                    "bytes": len(t.encode()), "license": LICENSE} for f, t in read_embedded(files)]
        build_shards((t for _, t in read_embedded(files)), out, tok, sources=sources,
                     shard_size_tokens=shard_size_tokens, overwrite=True)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
