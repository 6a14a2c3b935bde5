"""``python -m rag build|query|ask|eval|tool``: index a corpus, search it, answer from it, measure it.

    python -m rag build --docs notes/ papers.jsonl --out idx/ [--embedder hf:models/bge-small] [--tokenizer DIR]
    python -m rag update idx/ --docs new.md changed/ [--remove old.md ...] [--cache emb.db]
    python -m rag query idx/ "how do I rotate the keys?" -k 5 [--mode bm25|dense|hybrid] [--rerank DIR] [--json]
    python -m rag ask idx/ "how do I rotate the keys?" --url http://localhost:8000 [--model NAME]
    python -m rag eval idx/ --queries queries.jsonl --qrels qrels.tsv [--measures ndcg@10 recall@100] [--run run.txt]
    python -m rag tool                       # the OpenAI tool spec for searching an index
    python -m rag mine --pairs pairs.jsonl --out train.jsonl [--embedder hf:DIR] [--negatives 3] [--relative-margin F]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rag.cache import CachedEmbedder, EmbeddingCache
from rag.chunk import token_length
from rag.dense import KINDS
from rag.docs import load_documents, read_queries
from rag.embed import load_embedder
from rag.index import MODES, RagIndex
from rag.metrics import evaluate, read_qrels, write_run
from rag.prompt import ask
from rag.rerank import CrossEncoderReranker
from rag.sparse import METHODS
from rag.tool import search_tool
from specs.errors import LmstackError
from specs.plugins import resolve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rag", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="chunk and index documents")
    b.add_argument("--docs", nargs="+", required=True, help="files, directories, or .jsonl collections")
    b.add_argument("--out", required=True, help="the index directory to write")
    b.add_argument("--chunk-size", type=int, default=1000)
    b.add_argument("--chunk-overlap", type=int, default=200)
    b.add_argument("--tokenizer", help="measure chunks in this tokenizer's tokens (a spec for lmstack.tokenizers' "
                   "auto: a directory, 'byte', ...); default: characters")
    b.add_argument("--embedder", help="add vectors: lmstack:DIR, hf:DIR, or a directory")
    b.add_argument("--vector-kind", choices=KINDS, default="flat")
    b.add_argument("--bm25", choices=METHODS, default="lucene")
    b.add_argument("--stemmer", default="english", help="Snowball stemmer language for BM25 terms; 'none' to keep "
                   "words whole")
    b.add_argument("--cache", help="an SQLite embedding cache to read and fill")
    b.add_argument("--device", default="auto")
    b.add_argument("--overwrite", action="store_true")
    u = sub.add_parser("update", help="add, replace and remove documents of an index (only new chunks are "
                       "embedded)")
    u.add_argument("index")
    u.add_argument("--docs", nargs="+", default=[], help="documents to add; one whose id the index holds replaces it")
    u.add_argument("--remove", nargs="+", default=[], metavar="ID", help="ids of documents to remove")
    u.add_argument("--cache", help="an SQLite embedding cache to read and fill")
    u.add_argument("--device", default="auto")
    for name, text in (("query", "search an index"), ("ask", "answer a question from an index with a chat server")):
        q = sub.add_parser(name, help=text)
        q.add_argument("index")
        q.add_argument("text")
        q.add_argument("-k", type=int, default=5)
        q.add_argument("--mode", choices=MODES, default="auto")
        q.add_argument("--device", default="auto")
        q.add_argument("--json", action="store_true")
        _rerank_args(q)
        if name == "ask":
            q.add_argument("--url", required=True, help="an OpenAI-compatible server's base URL")
            q.add_argument("--model")
            q.add_argument("--api-key")
            q.add_argument("--max-tokens", type=int, default=512)
            q.add_argument("--max-source-chars", type=int, default=12000,
                           help="cut the sources to this many characters (the model's context must hold them)")
    e = sub.add_parser("eval", help="retrieval quality against relevance judgments")
    e.add_argument("index")
    e.add_argument("--queries", required=True, help="JSONL (id, text) or TSV (qid<TAB>text)")
    e.add_argument("--qrels", required=True, help="TREC qrels or BEIR TSV")
    e.add_argument("-k", type=int, default=100, help="chunks retrieved a query")
    e.add_argument("--mode", choices=MODES, default="auto")
    e.add_argument("--measures", nargs="+", default=["ndcg@10", "recall@100", "mrr", "map"])
    e.add_argument("--run", help="also write the run as a TREC run file")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    _rerank_args(e)
    sub.add_parser("tool", help="print the OpenAI tool spec for searching an index")
    m = sub.add_parser("mine", help="add hard negatives to (query, positive) pairs (sentence-transformers' "
                       "mine_hard_negatives); writes lmstack-rl's text_pairs JSONL")
    m.add_argument("--pairs", required=True, help='JSONL: {"query" (or "anchor"), "positive"} a line')
    m.add_argument("--out", required=True, help="the JSONL to write (atomically)")
    m.add_argument("--corpus", nargs="+", default=[], help="more passages: files, directories or .jsonl "
                   "collections, each document one passage (the positives are always in)")
    m.add_argument("--embedder", help="score by cosine: lmstack:DIR, hf:DIR or a directory; default BM25")
    m.add_argument("--negatives", type=int, default=3, help="negatives a record")
    m.add_argument("--range-min", type=int, default=0, help="skip this many best candidates (likely unlabelled "
                   "positives)")
    m.add_argument("--range-max", type=int, help="consider only this many best candidates")
    m.add_argument("--max-score", type=float)
    m.add_argument("--min-score", type=float)
    m.add_argument("--absolute-margin", type=float, help="drop candidates within this of the positive's score")
    m.add_argument("--relative-margin", type=float, help="drop candidates above the positive's score less this "
                   "share of it (NV-Retriever's TopK-PercPos: 0.05)")
    m.add_argument("--sampling", choices=["top", "random"], default="top")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--keep-short", action="store_true", help="keep pairs with fewer negatives than asked")
    m.add_argument("--device", default="auto")
    return p


def _rerank_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", metavar="DIR", help="re-rank with this cross-encoder (a transformers sequence-"
                   "classification directory with one output)")
    p.add_argument("--rerank-depth", type=int, default=50, help="how many retrieved chunks the cross-encoder reads")


def _reranking(a: argparse.Namespace) -> dict:
    if not a.rerank:
        return {}
    return {"reranker": CrossEncoderReranker(a.rerank, device=a.device), "rerank_depth": a.rerank_depth}


def _build(a: argparse.Namespace) -> None:
    docs, skipped = load_documents(a.docs)
    length, length_name = len, "characters"
    if a.tokenizer:
        length, length_name = token_length(resolve("lmstack.tokenizers", "auto")(a.tokenizer)), f"tokens:{a.tokenizer}"
    embedder = load_embedder(a.embedder, device=a.device) if a.embedder else None
    if embedder is not None and a.cache:
        embedder = CachedEmbedder(embedder, EmbeddingCache(a.cache))
    idx = RagIndex.build(docs, a.out, chunk_size=a.chunk_size, chunk_overlap=a.chunk_overlap, length=length,
                         length_name=length_name, bm25_method=a.bm25,
                         stemmer=None if a.stemmer == "none" else a.stemmer, embedder=embedder,
                         vector_kind=a.vector_kind, overwrite=a.overwrite)
    vec = f", vectors {a.vector_kind} ({embedder.dim} dims)" if embedder is not None else ""
    print(f"indexed {idx.info['documents']} documents as {idx.info['chunks']} chunks into {a.out} (BM25 "
          f"{a.bm25}{vec})" + (f"; skipped {skipped} files that are not UTF-8 text" if skipped else ""))
    if isinstance(embedder, CachedEmbedder):
        print(f"embedding cache: {embedder.hits} hits, {embedder.misses} embedded")


def _update(a: argparse.Namespace) -> None:
    if not a.docs and not a.remove:
        raise ValueError("nothing to do: give --docs to add or --remove IDs")
    docs, skipped = load_documents(a.docs) if a.docs else ([], 0)
    idx = RagIndex.load(a.index, device=a.device)
    if idx.embedder is not None and a.cache:
        idx.embedder = CachedEmbedder(idx.embedder, EmbeddingCache(a.cache))
    before = idx.info["chunks"]
    idx = idx.update(add=docs, remove=a.remove)
    print(f"updated {a.index}: {len(docs)} documents added or replaced, {len(a.remove)} removed; "
          f"{idx.info['documents']} documents, {idx.info['chunks']} chunks (was {before})"
          + (f"; skipped {skipped} files that are not UTF-8 text" if skipped else ""))
    if isinstance(idx.embedder, CachedEmbedder):
        print(f"embedding cache: {idx.embedder.hits} hits, {idx.embedder.misses} embedded")


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "build":
            _build(a)
        elif a.cmd == "update":
            _update(a)
        elif a.cmd == "tool":
            print(json.dumps(search_tool(), indent=2))
        elif a.cmd == "query":
            hits = RagIndex.load(a.index, device=a.device).search(a.text, a.k, mode=a.mode, **_reranking(a))
            if a.json:
                print(json.dumps([h.to_json() for h in hits], ensure_ascii=False, indent=2))
            for n, h in enumerate(hits if not a.json else [], start=1):
                text = " ".join(h.chunk.text.split())
                print(f"[{n}] {h.score:.4f}  {h.chunk.id}  ({h.chunk.start}-{h.chunk.end})\n    "
                      f"{text[:300]}{'...' if len(text) > 300 else ''}")
        elif a.cmd == "ask":
            ans = ask(RagIndex.load(a.index, device=a.device), a.text, a.url, k=a.k, mode=a.mode, model=a.model,
                      api_key=a.api_key, max_tokens=a.max_tokens, max_source_chars=a.max_source_chars,
                      **_reranking(a))
            if a.json:
                print(json.dumps(ans.to_json(), ensure_ascii=False, indent=2))
            else:
                print(ans.text)
                for n in ans.cited:
                    c = ans.hits[n - 1].chunk
                    print(f"[{n}] {c.doc_id} ({c.start}-{c.end})")
        elif a.cmd == "mine":
            _mine(a)
        else:
            idx = RagIndex.load(a.index, device=a.device)
            run = idx.document_run(read_queries(a.queries), a.k, mode=a.mode, **_reranking(a))
            mean, per_query = evaluate(run, read_qrels(a.qrels), a.measures)
            if a.run:
                write_run(run, a.run)
            if a.json:
                print(json.dumps({"mean": mean, "queries": len(per_query), "per_query": per_query}, indent=2))
            else:
                print(f"{len(per_query)} judged queries, mode {a.mode}")
                for m, v in mean.items():
                    print(f"{m:>12}  {v:.4f}")
    except (LmstackError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _mine(a: argparse.Namespace) -> None:
    from rag.mining import MiningReport, mine_hard_negatives, read_pairs
    from specs.io import atomic_write_text

    pairs = read_pairs(a.pairs)
    corpus = [d.text for d in load_documents(a.corpus)[0]] if a.corpus else []
    embedder = load_embedder(a.embedder, device=a.device) if a.embedder else None
    rep = MiningReport()
    records = mine_hard_negatives(
        pairs, embedder=embedder, corpus=corpus, num_negatives=a.negatives, range_min=a.range_min,
        range_max=a.range_max, max_score=a.max_score, min_score=a.min_score, absolute_margin=a.absolute_margin,
        relative_margin=a.relative_margin, sampling_strategy=a.sampling, seed=a.seed, keep_short=a.keep_short,
        report=rep)
    atomic_write_text(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    dropped = "; ".join(f"{n} candidates over {k}" for k, n in rep.skipped.items() if n)
    print(f"wrote {a.out}: {rep.records} of {len(pairs)} pairs with hard negatives by "
          f"{'cosine (' + embedder.spec + ')' if embedder else 'BM25'}"
          + (f"; {rep.short} with fewer than {a.negatives}{' (kept)' if a.keep_short else ' (left out)'}"
             if rep.short else "") + (f"; dropped {dropped}" if dropped else ""), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
