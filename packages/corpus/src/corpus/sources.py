"""Reading the input: .txt, .md, .jsonl and .jsonl.gz files, and the embedded default (Python stdlib).

A .txt/.md file is one document. A JSONL line is one record in the Dolma layout (Soldaini et al. 2024,
https://github.com/allenai/dolma/blob/main/docs/data-format.md): ``{"id", "text", "source", "metadata": {...}}``;
only ``text`` is required, and a ``license`` key (top level or in ``metadata``) tags the record. Every problem
(unreadable file, bad UTF-8, malformed JSON line, a record without text) becomes an :class:`InputIssue` with file
and line, and unsupported files are listed: nothing is skipped silently. Files are visited in sorted order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from corpus.licenses import NOASSERTION, identify_license_text, is_license_file, normalize_expression
from specs.errors import ConfigError

SUFFIXES = (".txt", ".md", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True, kw_only=True)
class RawDocument:
    id: str
    text: str
    source: str  # the file (relative to the input root) or the record's ``source``
    file: str
    line: int | None
    license_hint: str | None  # from the record's metadata, already SPDX-normalised (or NOASSERTION)


@dataclass(frozen=True, kw_only=True)
class InputIssue:
    file: str
    line: int | None
    error: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(kw_only=True)
class InputInventory:
    """What the walk found, for the report."""

    root: str
    files: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    license_files: dict[str, str] = field(default_factory=dict)  # directory (relative) -> SPDX id
    file_bytes: dict[str, int] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)
    unrecognised_licenses: dict[str, int] = field(default_factory=dict)


def _supported(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def scan(root: Path) -> InputInventory:
    """Walk ``root`` (a directory or one file) in sorted order; find documents and LICENSE files."""
    if not root.exists():
        raise ConfigError("--input", f"{root} does not exist")
    inv = InputInventory(root=str(root))
    if root.is_file():
        inv.files.append(root.name)
        return inv
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if is_license_file(name):
                try:
                    inv.license_files[rel_dir] = identify_license_text(
                        (Path(dirpath) / name).read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    inv.license_files[rel_dir] = NOASSERTION
            elif _supported(name):
                inv.files.append(rel)
            else:
                inv.unsupported.append(rel)
    if not inv.files:
        raise ConfigError("--input", f"no input documents in {root} (looked for {', '.join(SUFFIXES)} files; "
                          f"found {len(inv.unsupported)} other files)")
    return inv


def directory_license(inv: InputInventory, rel_file: str) -> str:
    """SPDX id of the nearest LICENSE file at or above ``rel_file``'s directory, else NOASSERTION."""
    parts = Path(rel_file).parent.as_posix().split("/")
    for k in range(len(parts), 0, -1):
        d = "/".join(parts[:k])
        if d in inv.license_files:
            return inv.license_files[d]
    return inv.license_files.get(".", NOASSERTION)


def read_file(root: Path, rel: str, inv: InputInventory) -> Iterator[RawDocument | InputIssue]:
    """Documents of one file, or issues (a file that cannot be read yields a single issue)."""
    path = root / rel if root.is_dir() else root
    try:
        raw = path.read_bytes()
        if rel.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        yield InputIssue(file=rel, line=None, error=f"unreadable: {exc.__class__.__name__}: {exc}")
        return
    inv.file_bytes[rel] = len(raw)
    inv.file_sha256[rel] = hashlib.sha256(raw).hexdigest()
    if not rel.lower().endswith((".jsonl", ".jsonl.gz")):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            yield InputIssue(file=rel, line=line, error=f"invalid UTF-8 at byte {exc.start}: {exc.reason}")
            return
        yield RawDocument(id=rel, text=text, source=rel, file=rel, line=None, license_hint=None)
        return
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield InputIssue(file=rel, line=lineno, error=f"invalid UTF-8 at byte {exc.start} of the line: "
                                                          f"{exc.reason}")
            continue
        except json.JSONDecodeError as exc:
            yield InputIssue(file=rel, line=lineno, error=f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            yield InputIssue(file=rel, line=lineno, error="record has no string 'text' field")
            continue
        meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
        lic = rec.get("license", meta.get("license"))
        hint = None
        if isinstance(lic, str) and lic.strip():
            hint = normalize_expression(lic)
            if hint is None:
                inv.unrecognised_licenses[lic] = inv.unrecognised_licenses.get(lic, 0) + 1
                hint = NOASSERTION
        yield RawDocument(id=str(rec.get("id", f"{rel}:{lineno}")), text=rec["text"],
                          source=str(rec.get("source") or rel), file=rel, line=lineno, license_hint=hint)


def embedded_documents(budget_bytes: int) -> tuple[InputInventory, Iterator[RawDocument | InputIssue]]:
    """The embedded default: data.embedded's stdlib selection, one document per file, licensed PSF-2.0."""
    import sys

    from data.embedded import LICENSE, embedded_files, stdlib_root

    files = embedded_files(budget_bytes)
    inv = InputInventory(root=f"embedded:python-stdlib-{sys.version.split()[0]} ({stdlib_root()})",
                         files=[f"python-stdlib/{f.relpath}" for f in files], license_files={".": LICENSE})

    def docs() -> Iterator[RawDocument | InputIssue]:
        for f in files:
            rel = f"python-stdlib/{f.relpath}"
            try:
                raw = f.path.read_bytes()
                text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                yield InputIssue(file=rel, line=None, error=f"unreadable: {exc}")
                continue
            inv.file_bytes[rel] = len(raw)
            inv.file_sha256[rel] = hashlib.sha256(raw).hexdigest()
            yield RawDocument(id=rel, text=text, source=rel, file=rel, line=None, license_hint=LICENSE)

    return inv, docs()
