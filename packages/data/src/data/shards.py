"""Token shards: an atomic, rolling :class:`ShardWriter` and an mmap :class:`ShardSet` reader with integrity checks.

A shard directory holds ``shard_NNNNN.bin`` (little-endian uint16/uint32 token ids, no header: the layout of
nanoGPT's ``train.bin``, so ``np.memmap(path, dtype=np.uint16)`` reads it), ``shard_NNNNN.idx`` (little-endian
uint64 document start offsets plus the end, ``num_documents + 1`` entries) and ``manifest.json`` (see
:mod:`data.manifest` and FORMAT.md). The writer stages everything in a temporary sibling directory and renames
it into place on commit, so readers never see half-written shards. The reader checks every file's length
against the manifest on open, and its sha256 on ``verify()``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data.manifest import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    INDEX_DTYPE,
    MANIFEST,
    dtype_for_vocab,
    dumps_manifest,
    read_manifest,
)
from specs.errors import ConfigError
from specs.modelcard import IntegrityError

_HASH_CHUNK = 1 << 22


class ShardIntegrityError(IntegrityError):
    """A shard file is missing, truncated or does not match the sha256 in its manifest."""


def _created_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lmstack-data {version('lmstack-data')}"
    except PackageNotFoundError:
        return "lmstack-data"


def check_outdir(outdir: str | os.PathLike[str], *, overwrite: bool, name: str = "outdir") -> Path:
    """Refuse an output directory that a commit could not replace cleanly, before any work; returns it as a Path.

    A path that is, or lies under, something other than a directory is refused even with ``overwrite`` (a commit
    only replaces a directory). A non-empty directory needs ``overwrite``. ``name`` is the field path in the
    ConfigError (a CLI passes its flag, ``--outdir``).
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ConfigError(name, f"{out} exists and is not a directory; expected a directory path (a file is never "
                          "replaced, even with --overwrite)")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(name, f"cannot create {out}: {blocker} is not a directory")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise ConfigError(name, f"{out} exists and is not empty; choose a new directory or pass overwrite=True "
                          "(--overwrite) to replace it")
    return out


class ShardWriter:
    """Append tokenized documents; shards roll before ``shard_size_tokens`` would be exceeded.

    A document is never split across shards (one longer than ``shard_size_tokens`` gets a shard of its own).
    Use as a context manager: a clean exit commits (atomic rename into ``outdir``), an exception discards.
    ``write_file(name, data)`` stages extra files (reports, the tokenizer) that land in the same commit.
    """

    def __init__(self, outdir: str | os.PathLike[str], *, vocab_size: int, tokenizer: Mapping[str, Any] | None = None,
                 shard_size_tokens: int = 1 << 20, sources: Iterable[Mapping[str, Any]] = (),
                 separators: Mapping[str, bool] | None = None, created_by: str | None = None,
                 overwrite: bool = False) -> None:
        if shard_size_tokens <= 0:
            raise ConfigError("shard_size_tokens", f"must be positive, got {shard_size_tokens}")
        self.outdir = Path(outdir)
        self.vocab_size = int(vocab_size)
        self.dtype_name = dtype_for_vocab(self.vocab_size)
        self.dtype = DTYPES[self.dtype_name]
        self.shard_size_tokens = int(shard_size_tokens)
        self.tokenizer = dict(tokenizer or {})
        self.sources = [dict(s) for s in sources]
        self.separators = dict(separators or {})
        self.created_by = created_by or _created_by()
        self.overwrite = overwrite
        self.extra: dict[str, Any] = {}
        check_outdir(self.outdir, overwrite=overwrite)
        self.outdir.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.outdir.name}.tmp-", dir=self.outdir.parent))
        os.chmod(self.staging, 0o755)  # mkdtemp makes it 0700; the committed directory is an ordinary one
        self._shards: list[dict[str, Any]] = []
        self._fh: Any = None
        self._hash: Any = None
        self._offsets: list[int] = [0]
        self._closed = False

    # ---- writing ---------------------------------------------------------------------------------------------
    def add_document(self, tokens: Any) -> None:
        """Append one document's token ids (any 1-D integer sequence); empty documents are skipped."""
        arr = np.asarray(tokens)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ConfigError("tokens", f"expected a 1-D sequence of integer ids, got shape {arr.shape} "
                              f"dtype {arr.dtype}")
        if arr.size == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ConfigError("tokens", f"ids must lie in [0, {self.vocab_size}), got [{lo}, {hi}] "
                              f"(document {self.num_documents})")
        n = self._offsets[-1]  # tokens in the open shard
        if self._fh is not None and n > 0 and n + arr.size > self.shard_size_tokens:
            self._finish_shard()
        if self._fh is None:
            self._start_shard()
        data = arr.astype(self.dtype, copy=False).tobytes()
        self._fh.write(data)
        self._hash.update(data)
        self._offsets.append(self._offsets[-1] + int(arr.size))

    def add_documents(self, docs: Iterable[Any]) -> None:
        for d in docs:
            self.add_document(d)

    def write_file(self, name: str, data: bytes | str) -> Path:
        """Stage an extra file (``name`` relative to the output directory) for the same atomic commit."""
        path = self.staging / name
        if path.resolve().parent != self.staging.resolve() and self.staging.resolve() not in path.resolve().parents:
            raise ConfigError("name", f"{name!r} must stay inside the output directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    @property
    def num_documents(self) -> int:
        return sum(s["num_documents"] for s in self._shards) + len(self._offsets) - 1

    @property
    def num_tokens(self) -> int:
        return sum(s["num_tokens"] for s in self._shards) + self._offsets[-1]

    @property
    def num_shards(self) -> int:
        return len(self._shards) + (self._fh is not None)

    def _start_shard(self) -> None:
        name = f"shard_{len(self._shards):05d}.bin"
        self._fh = open(self.staging / name, "wb")  # noqa: SIM115 - closed in _finish_shard
        self._hash = hashlib.sha256()
        self._offsets = [0]

    def _finish_shard(self) -> None:
        name = Path(self._fh.name).name
        self._fh.close()
        idx = np.asarray(self._offsets, dtype=INDEX_DTYPE).tobytes()
        idx_name = name.replace(".bin", ".idx")
        (self.staging / idx_name).write_bytes(idx)
        n_tokens = self._offsets[-1]
        self._shards.append({
            "path": name, "sha256": self._hash.hexdigest(), "bytes": n_tokens * self.dtype.itemsize,
            "num_tokens": n_tokens, "num_documents": len(self._offsets) - 1,
            "index": {"path": idx_name, "sha256": hashlib.sha256(idx).hexdigest(), "bytes": len(idx)},
        })
        self._fh = None
        self._offsets = [0]

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": self.dtype_name, "byteorder": "little",
            "vocab_size": self.vocab_size, "num_tokens": sum(s["num_tokens"] for s in self._shards),
            "num_documents": sum(s["num_documents"] for s in self._shards), "num_shards": len(self._shards),
            "shards": self._shards, "tokenizer": self.tokenizer, "sources": self.sources,
            "separators": self.separators, "created_by": self.created_by, "extra": self.extra,
        }

    # ---- commit / abort --------------------------------------------------------------------------------------
    def commit(self) -> Path:
        """Finish the last shard, write the manifest and move the directory into place. Returns ``outdir``."""
        if self._closed:
            raise ConfigError("ShardWriter", "already committed or aborted")
        if self._fh is not None:
            self._finish_shard()
        if not self._shards:
            self.abort()
            raise ConfigError("documents", f"no tokens were written to {self.outdir} (every document was empty "
                              "or filtered out)")
        (self.staging / MANIFEST).write_text(dumps_manifest(self.manifest()), encoding="utf-8")
        self._closed = True
        if self.outdir.exists():
            old = self.outdir.with_name(f".{self.outdir.name}.old-{os.getpid()}")
            os.replace(self.outdir, old)
            os.replace(self.staging, self.outdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.staging, self.outdir)
        return self.outdir

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._closed = True
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Shard:
    """One shard: ``tokens`` (N,) and ``offsets`` (D+1,) as read-only memmaps, opened lazily per process."""

    def __init__(self, directory: Path, entry: Mapping[str, Any], dtype: np.dtype) -> None:
        self.path = directory / entry["path"]
        self.index_path = directory / entry["index"]["path"]
        self.entry = dict(entry)
        self.dtype = dtype
        self.num_tokens = int(entry["num_tokens"])
        self.num_documents = int(entry["num_documents"])
        self._tokens: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def check_lengths(self) -> None:
        """Sizes against the manifest, and the document index's invariants; raises ShardIntegrityError."""
        e = self.entry
        for path, expected in ((self.path, e["bytes"]), (self.index_path, e["index"]["bytes"])):
            if not path.is_file():
                raise ShardIntegrityError(f"{path}: missing (listed in the manifest)")
            size = path.stat().st_size
            if size != expected:
                raise ShardIntegrityError(f"{path}: {size} bytes on disk, the manifest says {expected} "
                                          f"({'truncated' if size < expected else 'extra bytes'})")
        if e["bytes"] != self.num_tokens * self.dtype.itemsize:
            raise ShardIntegrityError(f"{self.path}: manifest bytes {e['bytes']} != num_tokens {self.num_tokens} "
                                      f"x {self.dtype.itemsize}")
        if e["index"]["bytes"] != (self.num_documents + 1) * INDEX_DTYPE.itemsize:
            raise ShardIntegrityError(f"{self.index_path}: {e['index']['bytes']} bytes cannot hold "
                                      f"{self.num_documents} + 1 offsets")
        off = self.offsets
        if off[0] != 0 or off[-1] != self.num_tokens or np.any(np.diff(off.astype(np.int64)) < 0):
            raise ShardIntegrityError(f"{self.index_path}: document offsets must rise from 0 to {self.num_tokens}")

    def verify(self) -> None:
        """Hash both files and compare with the manifest (ShardIntegrityError names the file)."""
        self.check_lengths()
        for path, expected in ((self.path, self.entry["sha256"]), (self.index_path, self.entry["index"]["sha256"])):
            got = sha256_file(path)
            if got != expected:
                raise ShardIntegrityError(f"{path}: sha256 {got} does not match the manifest's {expected} "
                                          "(the file is corrupted or was modified)")

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._tokens

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = np.memmap(self.index_path, dtype=INDEX_DTYPE, mode="r", shape=(self.num_documents + 1,))
        return self._offsets

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def __getstate__(self) -> dict[str, Any]:
        # A memmap pickles as a full copy; DataLoader workers reopen the files instead.
        return {**self.__dict__, "_tokens": None, "_offsets": None}


class ShardSet:
    """All shards of a directory. ``ShardSet.open(dir)`` validates the manifest and every file's length."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.dtype = DTYPES[manifest["dtype"]]
        self.shards = [Shard(directory, e, self.dtype) for e in manifest["shards"]]

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, verify: bool = False) -> ShardSet:
        d = Path(directory).expanduser()
        s = cls(d, read_manifest(d))
        for shard in s.shards:
            shard.check_lengths()
        if verify:
            s.verify()
        return s

    def verify(self) -> None:
        for shard in self.shards:
            shard.verify()

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.manifest["num_documents"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.manifest.get("tokenizer") or {})

    def documents(self) -> Iterable[np.ndarray]:
        for shard in self.shards:
            for i in range(shard.num_documents):
                yield shard.document(i)

    def __len__(self) -> int:
        return len(self.shards)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
