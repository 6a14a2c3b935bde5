"""Read a corpus from files: plain text and Markdown files, directories of them, and JSONL collections.

A ``.jsonl`` file holds one document a line, ``{"id": ..., "text": ...}`` (BEIR's ``_id``, and a ``title`` it
prepends to the text, are understood too); other keys become metadata. Any other file is one document whose id is
its path relative to the directory named (or its own path). Files that are not UTF-8 text are skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rag.chunk import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".py", ".json", ".yaml", ".yml", ".csv",
                 ".tex", ".org", ".adoc")


def read_jsonl(path: Path) -> list[Document]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object with 'id' and 'text'")
            doc_id = row.pop("id", row.pop("_id", None))
            text = row.pop("text", None)
            if doc_id is None or not isinstance(text, str):
                raise ValueError(f"{path}:{n}: a document needs 'id' (or '_id') and a string 'text'")
            title = row.pop("title", "")
            docs.append(Document(str(doc_id), f"{title}\n\n{text}" if title else text, row))
    return docs


def load_documents(paths: Sequence[str | Path], *, suffixes: Sequence[str] = TEXT_SUFFIXES
                   ) -> tuple[list[Document], int]:
    """(documents, files skipped as not UTF-8) from files and directories (searched recursively by suffix)."""
    docs: list[Document] = []
    skipped = 0
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or directory: {p}")
        if p.is_file() and p.suffix == ".jsonl":
            docs.extend(read_jsonl(p))
            continue
        files = [(p, p.name)] if p.is_file() else [
            (f, f.relative_to(p).as_posix()) for f in sorted(p.rglob("*"))
            if f.is_file() and f.suffix.lower() in suffixes]
        for f, name in files:
            try:
                docs.append(Document(name if p.is_dir() else str(p), f.read_text(encoding="utf-8"),
                                     {"path": str(f)}))
            except UnicodeDecodeError:
                skipped += 1
    return docs, skipped


def read_queries(path: str | Path) -> dict[str, str]:
    """Queries from JSONL (``id``/``_id`` and ``text``) or TSV (``qid<TAB>text``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return {d.id: d.text for d in read_jsonl(path)}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        qid, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: expected 'qid<TAB>text'")
        out[qid] = text
    return out
