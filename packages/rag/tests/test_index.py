"""The index directory: build, load, the three search modes, atomic rebuilds, and the tool-call dispatcher."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from rag.chunk import Document
from rag.embed import load_embedder
from rag.fusion import reciprocal_rank_fusion
from rag.index import RagIndex
from rag.tool import run_tool_call, search_tool


def test_bm25_index_round_trip(tmp_path, docs):
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=80, chunk_overlap=20)
    hits = idx.search("how often do we rotate signing keys", k=3)
    assert hits[0].chunk.doc_id == "keys.md" and hits[0].ranks == {"bm25": 1}
    again = RagIndex.load(tmp_path / "idx")
    assert [h.to_json() for h in again.search("rollback router", 4)] == [h.to_json() for h in
                                                                          idx.search("rollback router", 4)]
    assert again.info["documents"] == 4 and again.info["chunks"] == len(again.chunks) > 4
    src = {d.id: d.text for d in docs}
    assert all(src[c.doc_id][c.start:c.end] == c.text for c in again.chunks)
    with pytest.raises(ValueError, match="mode 'dense' needs vectors"):
        again.search("keys", mode="dense")


def test_dense_and_hybrid(tmp_path, docs, encoder_dir):
    emb = load_embedder(str(encoder_dir), device="cpu")
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=120, chunk_overlap=0, embedder=emb)
    probe = idx.chunks[3].text
    dense = idx.search(probe, k=3, mode="dense")
    assert dense[0].chunk == idx.chunks[3] and dense[0].score == pytest.approx(1.0, abs=1e-4)
    lexical = idx.search("escalate database incidents", k=50, mode="bm25")
    meaning = idx.search("escalate database incidents", k=50, mode="dense")
    hybrid = RagIndex.load(tmp_path / "idx").search("escalate database incidents", k=5)  # auto: hybrid
    want = reciprocal_rank_fusion([[h.chunk.id for h in lexical], [h.chunk.id for h in meaning]])[:5]
    assert [(h.chunk.id, pytest.approx(s)) for h, (_, s) in zip(hybrid, want)] == [(i, s) for i, s in want]
    assert set(hybrid[0].ranks) <= {"bm25", "dense"} and hybrid[0].ranks


def test_a_different_embedder_is_refused(tmp_path, docs, encoder_dir):
    RagIndex.build(docs, tmp_path / "idx", chunk_size=200, chunk_overlap=0,
                   embedder=load_embedder(str(encoder_dir), device="cpu"))
    other = load_embedder(str(encoder_dir), device="cpu")
    other.fingerprint = "0" * 64
    with pytest.raises(ValueError, match="queries must be embedded by the same model"):
        RagIndex.load(tmp_path / "idx", embedder=other)


class Exploding:
    spec, fingerprint, dim = "boom:", "x", 4

    def embed(self, texts, *, kind="document"):
        raise RuntimeError("the GPU fell over")


def test_rebuilds_are_atomic(tmp_path, docs):
    out = tmp_path / "idx"
    RagIndex.build(docs, out, chunk_size=200, chunk_overlap=0)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        RagIndex.build(docs, out)
    with pytest.raises(RuntimeError, match="fell over"):
        RagIndex.build([Document("new", "other text")], out, embedder=Exploding(), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before and RagIndex.load(out).info["documents"] == 4
    assert os.listdir(tmp_path) == ["idx"]  # no temporary directory left behind
    RagIndex.build([Document("new", "other text")], out, overwrite=True)
    assert RagIndex.load(out).info["documents"] == 1 and os.listdir(tmp_path) == ["idx"]


def test_document_run_keeps_each_documents_best_chunk(tmp_path, docs):
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=60, chunk_overlap=0)
    run = idx.document_run({"q1": "router colour cache"}, k=20)
    hits = idx.search("router colour cache", 20)
    for doc, score in run["q1"].items():
        assert score == max(h.score for h in hits if h.chunk.doc_id == doc)


def test_tool_spec_and_calls(tmp_path, docs):
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=80, chunk_overlap=0)
    spec = search_tool()
    jsonschema.Draft202012Validator.check_schema(spec["function"]["parameters"])

    def call(args, name="search_documents"):
        msg = run_tool_call(idx, {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}})
        assert msg["role"] == "tool" and msg["tool_call_id"] == "c1"
        return json.loads(msg["content"])

    got = call(json.dumps({"query": "signing keys vault", "k": 2}))
    assert len(got["results"]) == 2 and got["results"][0]["source"] == "keys.md"
    assert "keys.md" in got["results"][0]["chunk"] and got["results"][0]["text"]
    assert call(json.dumps({"query": "x", "k": 0}))["error"].startswith("k: 0 is less than the minimum of 1")
    assert "Additional properties are not allowed ('top'" in call(json.dumps({"query": "x", "top": 3}))["error"]
    assert "'query' is a required property" in call("{}")["error"]
    assert call("{not json")["error"].startswith("arguments are not valid JSON")
    assert "unknown tool 'web_search'" in call("{}", name="web_search")["error"]
    assert "needs vectors" in call(json.dumps({"query": "keys", "mode": "dense"}))["error"]
