"""Split documents into retrieval chunks that remember where they came from.

The algorithm is LangChain's ``RecursiveCharacterTextSplitter`` (langchain-text-splitters): split on the first
separator of ``separators`` the text contains (``"\\n\\n"``, then ``"\\n"``, ``" "``, single characters), keep each
separator at the start of the piece that follows it, merge neighbouring pieces greedily up to ``chunk_size``
(measured by ``length``: characters by default, or tokens with a tokenizer), carry up to ``chunk_overlap`` of the
previous chunk's tail into the next, and split any piece still too long with the next separator. Its chunks'
texts are LangChain's exactly (tests compare them). The difference is bookkeeping: pieces are kept as spans of the
source, so every :class:`Chunk` carries its exact character offsets (LangChain's ``start_index`` finds each chunk
again with ``str.find``, which picks the wrong place when a passage repeats), and citations can point into the
source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SEPARATORS = ("\n\n", "\n", " ", "")


@dataclass(frozen=True)
class Document:
    """A source text: ``id`` is unique in a corpus (a path, a URL, a database key)."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """``text == source.text[start:end]``; ``id`` is ``"{doc_id}#{index}"``."""

    doc_id: str
    index: int
    start: int
    end: int
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "index": self.index, "start": self.start, "end": self.end,
                "text": self.text, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Chunk:
        return cls(doc_id=doc["doc_id"], index=doc["index"], start=doc["start"], end=doc["end"], text=doc["text"],
                   metadata=doc.get("metadata", {}))


def token_length(tokenizer: Any) -> Callable[[str], int]:
    """A ``length`` function counting ``tokenizer.encode(text)`` ids (any specs Tokenizer or tokenizers' object)."""

    def length(text: str) -> int:
        ids = tokenizer.encode(text)
        return len(getattr(ids, "ids", ids))

    return length


class RecursiveSplitter:
    """``RecursiveSplitter(chunk_size=512, chunk_overlap=64).split(text) -> [(start, end), ...]``."""

    def __init__(self, *, chunk_size: int, chunk_overlap: int = 0, length: Callable[[str], int] = len,
                 separators: Sequence[str] = DEFAULT_SEPARATORS):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"chunk_overlap must be in [0, chunk_size={chunk_size}), got {chunk_overlap}")
        if not separators:
            raise ValueError("separators must name at least one separator (\"\" splits into characters)")
        self.chunk_size, self.chunk_overlap, self.length = chunk_size, chunk_overlap, length
        self.separators = tuple(separators)

    def split(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the chunks, leading and trailing whitespace excluded, empty chunks dropped."""
        return self._split(text, 0, len(text), self.separators)

    def _split(self, text: str, lo: int, hi: int, separators: Sequence[str]) -> list[tuple[int, int]]:
        piece = text[lo:hi]
        separator, rest = separators[-1], ()
        for i, sep in enumerate(separators):
            if not sep:
                separator = sep
                break
            if sep in piece:
                separator, rest = sep, tuple(separators[i + 1:])
                break
        chunks: list[tuple[int, int]] = []
        good: list[tuple[int, int]] = []
        for a, b in _pieces(piece, separator, lo):
            if self.length(text[a:b]) < self.chunk_size:
                good.append((a, b))
                continue
            if good:
                chunks.extend(self._merge(text, good))
                good = []
            chunks.extend(self._split(text, a, b, rest) if rest else _stripped(text, a, b))
        if good:
            chunks.extend(self._merge(text, good))
        return chunks

    def _merge(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        # LangChain's _merge_splits with the separator kept in the pieces (so joining adds nothing): the window
        # [first, last] grows until the next piece would pass chunk_size, is emitted, then loses pieces from the
        # front until what remains is within chunk_overlap and leaves room for the next piece.
        out: list[tuple[int, int]] = []
        window: list[tuple[int, int, int]] = []  # (start, end, length)
        total = 0
        for a, b in spans:
            n = self.length(text[a:b])
            if total + n > self.chunk_size and window:
                out.extend(_stripped(text, window[0][0], window[-1][1]))
                while window and (total > self.chunk_overlap or total + n > self.chunk_size):
                    total -= window.pop(0)[2]
            window.append((a, b, n))
            total += n
        if window:
            out.extend(_stripped(text, window[0][0], window[-1][1]))
        return out


def _pieces(piece: str, separator: str, offset: int) -> list[tuple[int, int]]:
    """Spans of ``piece`` split before each ``separator`` (the separator starts the next span), empty ones dropped."""
    if not separator:
        return [(offset + i, offset + i + 1) for i in range(len(piece))]
    cuts = [m.start() for m in re.finditer(re.escape(separator), piece)]
    bounds = [0, *cuts, len(piece)]
    return [(offset + a, offset + b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _stripped(text: str, a: int, b: int) -> list[tuple[int, int]]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return [(a, b)] if b > a else []


def chunk_documents(docs: Iterable[Document], *, chunk_size: int = 1000, chunk_overlap: int = 200,
                    length: Callable[[str], int] = len,
                    separators: Sequence[str] = DEFAULT_SEPARATORS) -> list[Chunk]:
    """Every document's chunks in order (``chunk_size`` and ``chunk_overlap`` in units of ``length``)."""
    splitter = RecursiveSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, length=length,
                                 separators=separators)
    chunks, seen = [], set()
    for doc in docs:
        if doc.id in seen:
            raise ValueError(f"document id {doc.id!r} appears twice; ids must be unique in a corpus")
        seen.add(doc.id)
        for i, (a, b) in enumerate(splitter.split(doc.text)):
            chunks.append(Chunk(doc_id=doc.id, index=i, start=a, end=b, text=doc.text[a:b], metadata=doc.metadata))
    return chunks


def text_digest(text: str) -> str:
    """sha256 of the UTF-8 text, hex: how the index and the embedding cache recognise a passage."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
