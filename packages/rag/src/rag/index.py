"""A retrieval index over chunked documents: BM25, vectors, or both fused, saved as one directory.

Layout (written to a temporary sibling and renamed into place, so a failed build never leaves half an index):
``rag.json`` (schema version, chunking, BM25 and vector settings, the embedder's spec and fingerprint),
``chunks.jsonl`` (one :class:`~rag.chunk.Chunk` a line, in row order), ``bm25/`` (bm25s's arrays) and
``vectors.faiss``. ``update`` adds, replaces and removes documents: it chunks and embeds only the new ones, keeps
the stored vectors of the rest, rebuilds BM25 (its idf is over the whole corpus) and rewrites the directory the same
atomic way. Search modes: ``bm25``; ``dense`` (needs an embedder); ``hybrid``: both retrievers' top
``candidates`` fused by reciprocal rank (:mod:`rag.fusion`); ``auto``: hybrid when the index has vectors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunk import DEFAULT_SEPARATORS, Chunk, Document, chunk_documents, token_length
from rag.dense import VectorIndex
from rag.embed import Embedder, load_embedder
from rag.fusion import reciprocal_rank_fusion
from rag.sparse import BM25Index

SCHEMA_VERSION = 1
MODES = ("auto", "bm25", "dense", "hybrid")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: ``score`` is the mode's (BM25, cosine, or fused); ``ranks`` each retriever's rank."""

    chunk: Chunk
    score: float
    ranks: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.chunk.to_json(), "score": self.score, "ranks": dict(self.ranks)}


class RagIndex:
    """``RagIndex.build(docs, "idx/")``, ``RagIndex.load("idx/").search("query", k=5) -> [Hit, ...]``."""

    def __init__(self, directory: Path, info: dict[str, Any], chunks: list[Chunk], bm25: BM25Index,
                 vectors: VectorIndex | None, embedder: Embedder | None):
        self.directory, self.info, self.chunks = directory, info, chunks
        self.bm25, self.vectors, self.embedder = bm25, vectors, embedder

    @classmethod
    def build(cls, docs: Iterable[Document], directory: str | Path, *, chunk_size: int = 1000,
              chunk_overlap: int = 200, length: Callable[[str], int] = len, length_name: str = "characters",
              separators: Sequence[str] = DEFAULT_SEPARATORS, bm25_method: str = "lucene",
              stemmer: str | None = "english", embedder: Embedder | None = None, vector_kind: str = "flat",
              overwrite: bool = False) -> RagIndex:
        """Chunk ``docs``, index them and write ``directory``; ``embedder`` adds vectors (dense and hybrid)."""
        out = Path(directory)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        chunks = chunk_documents(docs, chunk_size=chunk_size, chunk_overlap=chunk_overlap, length=length,
                                 separators=separators)
        if not chunks:
            raise ValueError("the documents hold no text to index")
        texts = [c.text for c in chunks]
        bm25 = BM25Index.build(texts, method=bm25_method, stemmer=stemmer)
        vectors = None
        if embedder is not None:
            vectors = VectorIndex.build(embedder.embed(texts, kind="document"), kind=vector_kind)
        info = {
            "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "documents": len({c.doc_id for c in chunks}), "chunks": len(chunks),
            "chunking": {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "length": length_name,
                         "separators": list(separators)},
            "bm25": {"method": bm25_method, "stemmer": stemmer},
            "vectors": None if embedder is None else {"kind": vector_kind, "dim": embedder.dim,
                                                      "embedder": embedder.spec, "fingerprint": embedder.fingerprint},
        }
        _save(out, info, chunks, bm25, vectors)
        return cls(out, info, chunks, bm25, vectors, embedder)

    def update(self, add: Iterable[Document] = (), remove: Iterable[str] = (), *,
               length: Callable[[str], int] | None = None) -> RagIndex:
        """Add the documents ``add`` (replacing those of the same id) and drop those whose ids are in ``remove``,
        then rewrite the directory (atomically, as ``build``) and return the updated index. The new documents are
        chunked with the index's recorded settings and embedded by its embedder; every other chunk keeps its
        stored vector. ``length`` measures chunks when the index counts tokens (default: the recorded tokenizer
        spec, through ``lmstack.tokenizers``). The result equals a fresh ``build`` over the documents it holds,
        kept ones first in their order, then ``add``'s."""
        add, remove = list(add), list(dict.fromkeys(remove))
        held = {c.doc_id for c in self.chunks}
        missing = [r for r in remove if r not in held]
        if missing:
            raise ValueError(f"cannot remove {missing[:3]}: no such document in {self.directory}")
        ids = [d.id for d in add]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"documents {twice[:3]} are added more than once")
        both = sorted(set(ids) & set(remove))
        if both:
            raise ValueError(f"documents {both[:3]} are both added and removed")
        chunking = self.info["chunking"]
        new = chunk_documents(add, chunk_size=chunking["chunk_size"], chunk_overlap=chunking["chunk_overlap"],
                              length=length or _length(chunking["length"]), separators=chunking["separators"])
        gone = set(ids) | set(remove)
        kept = [i for i, c in enumerate(self.chunks) if c.doc_id not in gone]
        chunks = [self.chunks[i] for i in kept] + new
        if not chunks:
            raise ValueError("the update leaves no text to index")
        bm25 = BM25Index.build([c.text for c in chunks], method=self.info["bm25"]["method"],
                               stemmer=self.info["bm25"]["stemmer"])
        vectors = None
        if self.vectors is not None:
            assert self.embedder is not None  # load() pairs vectors with their embedder
            fresh = self.embedder.embed([c.text for c in new], kind="document") if new else None
            old = self.vectors.vectors(kept)
            matrix = old if fresh is None else np.concatenate([old, np.asarray(fresh, dtype=np.float32)])
            vectors = VectorIndex.build(matrix, kind=self.info["vectors"]["kind"])
        info = {**self.info, "documents": len({c.doc_id for c in chunks}), "chunks": len(chunks),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _save(self.directory, info, chunks, bm25, vectors)
        return RagIndex(self.directory, info, chunks, bm25, vectors, self.embedder)

    @classmethod
    def load(cls, directory: str | Path, *, embedder: Embedder | None = None, **embedder_kwargs: Any) -> RagIndex:
        """Open an index; its embedder is loaded from the recorded spec unless one is passed (and must match)."""
        path = Path(directory)
        meta = path / "rag.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{path} is not a rag index (no rag.json); build one with `python -m rag build`")
        info = json.loads(meta.read_text())
        if info.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{meta}: schema_version {info.get('schema_version')!r}; this lmstack-rag reads "
                             f"{SCHEMA_VERSION}")
        with (path / "chunks.jsonl").open() as f:
            chunks = [Chunk.from_json(json.loads(line)) for line in f]
        bm25 = BM25Index.load(path / "bm25", len(chunks), info["bm25"]["stemmer"])
        vectors, vec_info = None, info.get("vectors")
        if vec_info:
            vectors = VectorIndex.load(path / "vectors.faiss")
            if embedder is None:
                embedder = load_embedder(vec_info["embedder"], **embedder_kwargs)
            if embedder.fingerprint != vec_info["fingerprint"]:
                raise ValueError(f"{path} was embedded by {vec_info['embedder']} (fingerprint "
                                 f"{vec_info['fingerprint'][:12]}); the embedder given is {embedder.spec} "
                                 f"({embedder.fingerprint[:12]}): queries must be embedded by the same model")
        return cls(path, info, chunks, bm25, vectors, embedder)

    def search(self, query: str, k: int = 5, *, mode: str = "auto", candidates: int = 50, rrf_k: float = 60.0,
               reranker: Any = None, rerank_depth: int = 50) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first."""
        return self.search_many([query], k, mode=mode, candidates=candidates, rrf_k=rrf_k, reranker=reranker,
                                rerank_depth=rerank_depth)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, *, mode: str = "auto", candidates: int = 50,
                    rrf_k: float = 60.0, reranker: Any = None, rerank_depth: int = 50) -> list[list[Hit]]:
        """Each query's ``k`` best chunks. ``candidates``: how deep each retriever goes before hybrid fusion;
        ``reranker`` (:class:`rag.rerank.CrossEncoderReranker`, or anything with ``rerank(query, hits, k)``)
        re-orders the ``rerank_depth`` best before the first ``k`` are kept."""
        if reranker is not None:
            found = self.search_many(queries, max(k, rerank_depth), mode=mode, candidates=candidates, rrf_k=rrf_k)
            return [reranker.rerank(q, hits, k) for q, hits in zip(queries, found)]
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; valid: {', '.join(MODES)}")
        if mode == "auto":
            mode = "hybrid" if self.vectors is not None else "bm25"
        if mode in ("dense", "hybrid") and (self.vectors is None or self.embedder is None):
            raise ValueError(f"mode {mode!r} needs vectors; {self.directory} was built without an embedder "
                             "(rebuild with --embedder, or search with mode 'bm25')")
        depth = k if mode != "hybrid" else max(k, candidates)
        lexical = self.bm25.search(queries, depth) if mode in ("bm25", "hybrid") else None
        dense = (self.vectors.search(self.embedder.embed(list(queries), kind="query"), depth)
                 if mode in ("dense", "hybrid") else None)
        out = []
        for i in range(len(queries)):
            if mode != "hybrid":
                name, ranked = (("bm25", lexical[i]) if mode == "bm25" else ("dense", dense[i]))
                out.append([Hit(self.chunks[r], s, {name: n}) for n, (r, s) in enumerate(ranked[:k], start=1)])
                continue
            ranks = {"bm25": {r: n for n, (r, _) in enumerate(lexical[i], 1)},
                     "dense": {r: n for n, (r, _) in enumerate(dense[i], 1)}}
            fused = reciprocal_rank_fusion([[r for r, _ in lexical[i]], [r for r, _ in dense[i]]], k=rrf_k)
            out.append([Hit(self.chunks[r], s, {name: rk[r] for name, rk in ranks.items() if r in rk})
                        for r, s in fused[:k]])
        return out

    def document_run(self, queries: Mapping[str, str], k: int = 100, **search_kwargs: Any) -> dict[str, dict]:
        """A TREC-style run at document level (a document scores its best chunk's score), for :func:`evaluate`."""
        ids = list(queries)
        run: dict[str, dict[str, float]] = {}
        for qid, hits in zip(ids, self.search_many([queries[q] for q in ids], k, **search_kwargs)):
            docs: dict[str, float] = {}
            for h in hits:
                docs[h.chunk.doc_id] = max(docs.get(h.chunk.doc_id, float("-inf")), h.score)
            run[qid] = docs
        return run


def _length(name: str) -> Callable[[str], int]:
    """The length function a recorded ``chunking.length`` names: ``characters``, or ``tokens:SPEC``."""
    if name == "characters":
        return len
    if name.startswith("tokens:"):
        from specs.plugins import resolve

        return token_length(resolve("lmstack.tokenizers", "auto")(name.removeprefix("tokens:")))
    raise ValueError(f"this index measured chunks in {name!r}; pass length= (the function it used)")


def _save(out: Path, info: dict[str, Any], chunks: list[Chunk], bm25: BM25Index, vectors: VectorIndex | None) -> None:
    """Write the index directory to a temporary sibling, then put it in place of ``out`` (moving an old one aside
    first, so a crash leaves one of the two whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with (tmp / "chunks.jsonl").open("w") as f:
            for c in chunks:
                f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
        bm25.save(tmp / "bm25")
        if vectors is not None:
            vectors.save(tmp / "vectors.faiss")
        (tmp / "rag.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "index")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
