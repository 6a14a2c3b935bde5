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


class Counting:
    """An embedder wrapper that counts the texts it embeds."""

    def __init__(self, inner):
        self.inner, self.texts = inner, []
        self.spec, self.fingerprint, self.dim = inner.spec, inner.fingerprint, inner.dim

    def embed(self, texts, *, kind="document"):
        self.texts += list(texts)
        return self.inner.embed(texts, kind=kind)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_update_equals_a_fresh_build_and_embeds_only_new_chunks(tmp_path, docs, encoder_dir, kind):
    emb = Counting(load_embedder(str(encoder_dir), device="cpu"))
    RagIndex.build(docs, tmp_path / "idx", chunk_size=90, chunk_overlap=20, embedder=emb, vector_kind=kind)
    changed = Document("deploy.md", "Deploys now go through the canary pipeline; a rollback drains the canary.")
    added = Document("backup.md", "Backups run nightly and are restored monthly to prove they work.")
    emb.texts.clear()
    new = RagIndex.load(tmp_path / "idx", embedder=emb).update(add=[changed, added], remove=["faq.txt"])
    want_docs = [d for d in docs if d.id in ("keys.md", "oncall.md")] + [changed, added]
    fresh = RagIndex.build(want_docs, tmp_path / "fresh", chunk_size=90, chunk_overlap=20,
                           embedder=load_embedder(str(encoder_dir), device="cpu"), vector_kind=kind)
    assert new.chunks == fresh.chunks and new.info["documents"] == 4 and new.info["chunks"] == len(fresh.chunks)
    assert emb.texts == [c.text for c in new.chunks if c.doc_id in ("deploy.md", "backup.md")]  # only the new
    reloaded = RagIndex.load(tmp_path / "idx", embedder=emb)
    for mode in ("bm25", "dense", "hybrid"):
        for q in ("canary rollback", "how often are backups restored", "signing keys vault"):
            got = [(h.chunk.id, round(h.score, 5)) for h in reloaded.search(q, k=4, mode=mode)]
            assert got == [(h.chunk.id, round(h.score, 5)) for h in fresh.search(q, k=4, mode=mode)], (mode, q)
    assert "updated" in reloaded.info and sorted(os.listdir(tmp_path)) == ["fresh", "idx"]  # no temporary left


def test_update_refuses_what_it_cannot_do_and_keeps_the_index(tmp_path, docs):
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=200, chunk_overlap=0)
    for kwargs, match in (({"remove": ["nope.md"]}, r"cannot remove \['nope.md'\]"),
                          ({"add": [Document("a", "x y"), Document("a", "z w")]}, "added more than once"),
                          ({"add": [Document("keys.md", "x")], "remove": ["keys.md"]}, "both added and removed"),
                          ({"remove": [d.id for d in docs]}, "leaves no text")):
        with pytest.raises(ValueError, match=match):
            idx.update(**kwargs)
    assert RagIndex.load(tmp_path / "idx").chunks == idx.chunks
    with pytest.raises(RuntimeError, match="fell over"):  # the embedder fails mid-update: the old index stays
        vec = RagIndex.build(docs, tmp_path / "vec", chunk_size=200, chunk_overlap=0, embedder=Exploding2())
        vec.embedder = Exploding()
        vec.update(add=[Document("new.md", "more text")])
    assert RagIndex.load(tmp_path / "vec", embedder=Exploding2()).info["chunks"] == len(vec.chunks)
    assert sorted(os.listdir(tmp_path)) == ["idx", "vec"]
    idx.info["chunking"]["length"] = "words"  # an index measured by a function this package cannot rebuild
    with pytest.raises(ValueError, match="pass length="):
        idx.update(add=[Document("n", "text")])
    idx.update(add=[Document("n", "some more text")], length=len)


class Exploding2:
    """A working embedder with Exploding's identity (the index accepts it), 4 dims."""

    spec, fingerprint, dim = "boom:", "x", 4

    def embed(self, texts, *, kind="document"):
        import numpy as np

        v = np.array([[len(t), t.count("e") + 1, t.count("a") + 1, 1.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
