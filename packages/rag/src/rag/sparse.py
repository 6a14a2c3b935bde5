"""Lexical retrieval: BM25 (Robertson et al. 1994) through bm25s (Lu 2024, arXiv:2407.03618).

bm25s precomputes every (term, document) score into a sparse matrix, so a query is a column sum.
- ``lucene`` (the default, as in Lucene and Elasticsearch): idf = ln(1 + (N - n + 0.5) / (n + 0.5)), never negative.
- ``robertson``: rank_bm25's ``BM25Okapi`` idf, ln((N - n + 0.5) / (n + 0.5)).
Term frequency saturates as tf / (tf + k1 (1 - b + b |d| / avgdl)): Lucene 8's form, without the constant factor
(k1 + 1) of the textbook formula (and of rank_bm25), which changes no ranking. Text becomes terms by :func:`terms`:
lowercase Unicode words of two or more characters, English stop words removed (bm25s's list), then stemmed by
Snowball's English stemmer (Porter2, through PyStemmer; ``stemmer=None`` keeps words whole), the same for documents
and queries, so "rollback" finds "rollbacks" as Lucene's English analyzer would. The index saves as bm25s's numpy
arrays and JSON (never pickle).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
_WORD = re.compile(r"(?u)\b\w\w+\b")
_STOP = frozenset(STOPWORDS_EN)


@lru_cache(maxsize=8)
def _stemmer(language: str) -> Stemmer.Stemmer:
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise ValueError(f"no Snowball stemmer for {language!r}; valid: "
                         f"{', '.join(Stemmer.algorithms())}") from None


def terms(text: str, stemmer: str | None = "english") -> list[str]:
    """The BM25 terms of ``text``: lowercase words of two or more characters, stop words removed, stemmed."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    return _stemmer(stemmer).stemWords(words) if stemmer and words else words


class BM25Index:
    """``BM25Index.build(texts).search(["query"], k=10) -> [[(row, score), ...]]`` (rows index ``texts``)."""

    def __init__(self, engine: bm25s.BM25, size: int, stemmer: str | None = "english"):
        self.engine, self.size, self.stemmer = engine, size, stemmer

    @classmethod
    def build(cls, texts: Sequence[str], *, method: str = "lucene", k1: float = 1.5, b: float = 0.75,
              stemmer: str | None = "english") -> BM25Index:
        if method not in METHODS:
            raise ValueError(f"unknown BM25 method {method!r}; valid: {', '.join(METHODS)}")
        if not texts:
            raise ValueError("cannot build a BM25 index over no texts")
        if stemmer:
            _stemmer(stemmer)  # an unknown language fails here, before any work
        engine = bm25s.BM25(method=method, k1=k1, b=b)
        engine.index([terms(t, stemmer) for t in texts], show_progress=False)
        return cls(engine, len(texts), stemmer)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[tuple[int, float]]]:
        """The ``k`` best rows for each query, best first; rows sharing no term with the query are left out."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        out: list[list[tuple[int, float]]] = []
        for q in queries:
            words = terms(q, self.stemmer)
            if not words:  # only stop words or one-letter words: nothing can match
                out.append([])
                continue
            scores = np.asarray(self.engine.get_scores(words), dtype=np.float64)
            top = np.argsort(-scores, kind="stable")[: min(k, self.size)]
            out.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
        return out

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), len(texts)) float64: every row's BM25 score for each query (0 where no term is shared)."""
        out = np.zeros((len(queries), self.size), dtype=np.float64)
        for i, q in enumerate(queries):
            words = terms(q, self.stemmer)
            if words:
                out[i] = self.engine.get_scores(words)
        return out

    def save(self, directory: str | Path) -> None:
        self.engine.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: str | Path, size: int, stemmer: str | None = "english") -> BM25Index:
        return cls(bm25s.BM25.load(str(directory), show_progress=False, verbosity=0), size, stemmer)
