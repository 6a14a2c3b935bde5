"""Grounded prompts and answers over HTTP, trec_eval-exact metrics, and the command line end to end."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytrec_eval

from rag.__main__ import main
from rag.chunk import token_length
from rag.docs import load_documents
from rag.index import RagIndex
from rag.metrics import evaluate, read_qrels, read_run, write_run
from rag.prompt import ask, build_messages, citations
from specs.plugins import resolve


@pytest.fixture
def server():
    """A stand-in OpenAI-compatible chat server: it records each request and answers citing source 2."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if body.get("model") == "broken":
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b'{"error": "model crashed"}')
                return
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content":
                                                          "Every ninety days [2], per policy [2, 9]."}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


def test_citations_and_messages(tmp_path, docs):
    assert citations("A [1]. B [3, 2] and [1][4] [x] [0]", n_sources=3) == [1, 3, 2]
    hits = RagIndex.build(docs, tmp_path / "i", chunk_size=80, chunk_overlap=0).search("signing keys", 2)
    system, user = build_messages("How often?", hits)
    assert system["role"] == "system" and "[1]" in system["content"]
    assert user["content"].startswith(f"Sources:\n\n[1] ({hits[0].chunk.doc_id}) {hits[0].chunk.text}")
    assert user["content"].endswith("Question: How often?") and f"[2] ({hits[1].chunk.doc_id})" in user["content"]
    short = build_messages("q", hits, max_source_chars=40)[1]["content"]
    assert len(short.split("\n\nQuestion:")[0]) <= len("Sources:\n\n") + 40
    with pytest.raises(ValueError, match="the question is empty"):
        build_messages("  ", hits)


def test_ask_posts_a_grounded_chat_and_maps_citations(tmp_path, docs, server):
    url, seen = server
    idx = RagIndex.build(docs, tmp_path / "i", chunk_size=80, chunk_overlap=0)
    ans = ask(idx, "How often are signing keys rotated?", url, k=3, model="tiny", api_key="sk-1")
    assert ans.cited == [2] and ans.text.startswith("Every ninety days")
    req = seen[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-1"
    user = req["body"]["messages"][1]["content"]
    assert req["body"]["model"] == "tiny" and user.count("\n\n[") == len(ans.hits) == 3
    with pytest.raises(RuntimeError, match=r"answered 500: \{\"error\": \"model crashed\"\}"):
        ask(idx, "q", url + "/v1", model="broken")
    with pytest.raises(RuntimeError, match="cannot reach"):
        ask(idx, "q", "http://127.0.0.1:9")


def test_measures_equal_trec_evals():
    rng = random.Random(0)
    names = {"P@5": "P_5", "recall@10": "recall_10", "ndcg@10": "ndcg_cut_10", "ndcg": "ndcg", "mrr": "recip_rank",
             "map": "map"}
    for _ in range(50):
        docs = [f"d{i}" for i in range(30)]
        qrels = {f"q{q}": {d: rng.choice([0, 0, 1, 2, 3, -1]) for d in rng.sample(docs, 10)} for q in range(4)}
        # scores rounded to one decimal: many ties, which trec_eval breaks by document id, descending
        run = {f"q{q}": {d: round(rng.random(), 1) for d in rng.sample(docs, rng.randint(1, 25))} for q in range(4)}
        want = pytrec_eval.RelevanceEvaluator(qrels, set(names.values())).evaluate(run)
        _, got = evaluate(run, qrels, list(names))
        for q in want:
            for ours, theirs in names.items():
                assert got[q][ours] == pytest.approx(want[q][theirs], abs=1e-12), (q, ours)
    mean, per = evaluate({"a": {"x": 1.0}}, {"a": {"x": 1}, "b": {"y": 1}}, ["mrr"])
    assert per["b"]["mrr"] == 0.0 and mean["mrr"] == 0.5  # a judged query with no run counts as zero
    with pytest.raises(ValueError, match="unknown measure 'ndcg@0'"):
        evaluate({}, {"a": {"x": 1}}, ["ndcg@0"])


def test_trec_files(tmp_path):
    run = {"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d3": 1.0}}
    write_run(run, tmp_path / "run.txt")
    assert (tmp_path / "run.txt").read_text().splitlines()[0] == "q1 Q0 d2 1 0.900000 lmstack"
    assert read_run(tmp_path / "run.txt") == run
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    (tmp_path / "q.trec").write_text("q1 0 d1 2\nq1 0 d2 0\n")
    assert read_qrels(tmp_path / "q.tsv") == {"q1": {"d1": 2}}
    assert read_qrels(tmp_path / "q.trec") == {"q1": {"d1": 2, "d2": 0}}
    (tmp_path / "bad").write_text("q1 0 d1 high\n")
    with pytest.raises(ValueError, match="bad:1: grade 'high' is not an integer"):
        read_qrels(tmp_path / "bad")


def test_cli_build_query_eval(tmp_path, docs, encoder_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "title": "T", "text": d.text}) + "\n" for d in docs))
    idx = tmp_path / "idx"
    assert main(["build", "--docs", str(corpus), "--out", str(idx), "--chunk-size", "64", "--chunk-overlap", "8",
                 "--tokenizer", "byte", "--embedder", f"lmstack:{encoder_dir}", "--cache", str(tmp_path / "c.db"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "indexed 4 documents" in out and "vectors flat (64 dims)" in out and "0 hits" in out
    info = json.loads((idx / "rag.json").read_text())
    assert info["chunking"]["length"] == "tokens:byte" and info["vectors"]["embedder"].startswith("lmstack:")
    assert main(["build", "--docs", str(corpus), "--out", str(idx), "--chunk-size", "64", "--chunk-overlap", "8",
                 "--tokenizer", "byte", "--embedder", f"lmstack:{encoder_dir}", "--cache", str(tmp_path / "c.db"),
                 "--device", "cpu", "--overwrite"]) == 0
    assert f"{info['chunks']} hits, 0 embedded" in capsys.readouterr().out

    assert main(["query", str(idx), "escalate database incidents", "-k", "2", "--mode", "bm25", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["doc_id"] == "oncall.md" and hits[0]["ranks"] == {"bm25": 1}

    (tmp_path / "queries.tsv").write_text("q1\twhere do keys live\nq2\tblue-green pipeline rollback\n")
    (tmp_path / "qrels.txt").write_text("q1 0 keys.md 1\nq2 0 deploy.md 2\nq2 0 faq.txt 1\n")
    assert main(["eval", str(idx), "--queries", str(tmp_path / "queries.tsv"), "--qrels", str(tmp_path / "qrels.txt"),
                 "--mode", "bm25", "--measures", "ndcg@10", "mrr", "--run", str(tmp_path / "run.txt"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    want, _ = evaluate(read_run(tmp_path / "run.txt"), read_qrels(tmp_path / "qrels.txt"), ["ndcg@10", "mrr"])
    assert report["mean"] == pytest.approx(want) and report["mean"]["mrr"] == 1.0

    # update: the recorded tokenizer measures the new chunks; only they are embedded (the cache saw the rest)
    (tmp_path / "new.md").write_text("Backups run nightly and are restored monthly to prove they work.")
    assert main(["update", str(idx), "--docs", str(tmp_path / "new.md"), "--remove", "faq.txt", "--cache",
                 str(tmp_path / "c.db"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "1 documents added or replaced, 1 removed; 4 documents" in printed
    new_chunks = sum(c.doc_id.endswith("new.md") for c in RagIndex.load(idx, device="cpu").chunks)
    assert f"embedding cache: 0 hits, {new_chunks} embedded" in printed  # the kept chunks were not embedded again
    loaded, _ = load_documents([corpus, tmp_path / "new.md"])
    fresh = RagIndex.build([d for d in loaded if d.id != "faq.txt"], tmp_path / "fresh", chunk_size=64,
                           chunk_overlap=8, length=token_length(resolve("lmstack.tokenizers", "auto")("byte")))
    assert RagIndex.load(idx, device="cpu").chunks == fresh.chunks
    assert main(["update", str(idx)]) == 2 and "nothing to do" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "nope"), "x"]) == 2
    assert "is not a rag index (no rag.json)" in capsys.readouterr().err
    assert main(["tool"]) == 0 and json.loads(capsys.readouterr().out)["function"]["name"] == "search_documents"
