"""BM25 against rank_bm25 and the Lucene formula; faiss indexes against brute force; fusion."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from rag.dense import VectorIndex
from rag.fusion import reciprocal_rank_fusion
from rag.sparse import BM25Index, terms


def _corpus(n=60, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}x" for i in range(400)]  # many terms, so each occurs in well under half the documents
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 40))) for _ in range(n)], vocab


def test_robertson_matches_rank_bm25():
    texts, vocab = _corpus()
    ref = BM25Okapi([terms(t) for t in texts], k1=1.5, b=0.75)
    ours = BM25Index.build(texts, method="robertson", k1=1.5, b=0.75)
    for q in ["w1x w2x w3x", "w10x w10x w399x", "w7x"]:
        want = ref.get_scores(terms(q))
        got = dict(ours.search([q], k=len(texts))[0])
        for row, score in enumerate(want):  # bm25s leaves out the constant factor (k1 + 1): rankings are the same
            assert got.get(row, 0.0) * (1.5 + 1) == pytest.approx(score, rel=1e-5, abs=1e-6)


def test_lucene_matches_the_formula_on_rank_bm25s_term_statistics():
    texts, _ = _corpus(seed=1)
    stats = BM25Okapi([terms(t) for t in texts])  # doc_freqs, doc_len, avgdl counted independently of bm25s
    k1, b, n = 1.2, 0.75, len(texts)
    ours = BM25Index.build(texts, method="lucene", k1=k1, b=b)
    q = ["w3x", "w5x", "w8x", "w13x"]
    got = dict(ours.search([" ".join(q)], k=n)[0])
    for row in range(n):
        want = 0.0
        for t in q:
            df = sum(t in freqs for freqs in stats.doc_freqs)
            tf = stats.doc_freqs[row].get(t, 0)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                # Lucene 8+ (LUCENE-8563) dropped the constant (k1 + 1) from the numerator
                want += idf * tf / (tf + k1 * (1 - b + b * stats.doc_len[row] / stats.avgdl))
        assert got.get(row, 0.0) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_bm25_search_drops_non_matches_and_round_trips(tmp_path):
    idx = BM25Index.build(["the cat sat", "a dog barked", "cats and dogs"], method="lucene")
    hits = idx.search(["cat", "unicorn", "the a"], k=10)
    assert sorted(r for r, _ in hits[0]) == [0, 2] and hits[1] == [] and hits[2] == []  # "cats" stems to "cat"
    assert terms("The CAT, the cat!") == ["cat", "cat"]
    idx.save(tmp_path / "bm25")
    assert BM25Index.load(tmp_path / "bm25", 3).search(["dog barked"], k=2) == idx.search(["dog barked"], k=2)
    with pytest.raises(ValueError, match="unknown BM25 method 'okapi'"):
        BM25Index.build(["x"], method="okapi")


def test_stemming():
    texts = ["rollbacks flip the router", "the keys were rotated"]
    assert terms("Rotating keys", "english") == ["rotat", "key"] and terms("Rotating keys", None) == ["rotating",
                                                                                                      "keys"]
    stemmed, whole = BM25Index.build(texts), BM25Index.build(texts, stemmer=None)
    assert [r for r, _ in stemmed.search(["rollback", "rotating key"], 2)[0]] == [0]
    assert [r for r, _ in stemmed.search(["rotating key"], 2)[0]] == [1]
    assert whole.search(["rollback", "rotating key"], 2) == [[], []]
    with pytest.raises(ValueError, match="no Snowball stemmer for 'klingon'; valid: .*english"):
        BM25Index.build(texts, stemmer="klingon")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    x, q = _unit(rng.normal(size=(500, 16))), _unit(rng.normal(size=(20, 16)))
    idx = VectorIndex.build(x, kind="flat")
    want = np.argsort(-(q @ x.T), axis=1)[:, :5]
    got = idx.search(q, 5)
    assert [[r for r, _ in row] for row in got] == want.tolist()
    assert got[0][0][1] == pytest.approx(float(q[0] @ x[want[0, 0]]), rel=1e-5)
    idx.save(tmp_path / "v.faiss")
    assert VectorIndex.load(tmp_path / "v.faiss").search(q, 5) == got


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall(kind):
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(20, 32))
    x = _unit(centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32)))
    q = _unit(centers[rng.integers(0, 20, 50)] + 0.3 * rng.normal(size=(50, 32)))
    exact = VectorIndex.build(x, kind="flat").search(q, 10)
    approx = VectorIndex.build(x, kind=kind, nprobe=8).search(q, 10)
    recall = np.mean([len({r for r, _ in a} & {r for r, _ in e}) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_vector_input_errors():
    with pytest.raises(ValueError, match=r"\(N, 4\) float matrix, got shape \(2, 3\)"):
        VectorIndex.build(np.ones((5, 4), np.float32)).search(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="NaN"):
        VectorIndex.build(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="unknown vector index kind 'lsh'"):
        VectorIndex.build(np.ones((2, 4)), kind="lsh")


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert [d for d, _ in fused] == ["a", "c", "b"]
    weighted = dict(reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 2.0]))
    assert weighted["b"] == pytest.approx(2 * weighted["a"])
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        reciprocal_rank_fusion([["a"]], weights=[1, 2])
