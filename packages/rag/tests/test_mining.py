"""Hard-negative mining: sentence-transformers' mine_hard_negatives option for option, BM25 mining, the CLI, and
records lmstack-rl's trainer reads."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import WORDS

from rag.embed import load_embedder
from rag.mining import MiningReport, mine_hard_negatives, read_pairs
from rag.sparse import BM25Index
from specs.errors import ConfigError

PLAIN = [w for w in WORDS if not w.startswith("##") and w not in (",", ":")]


def _pairs(n: int = 24, extra: int = 12, seed: int = 0) -> tuple[list[tuple[str, str]], list[str]]:
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(PLAIN) for _ in range(k))
    pairs = [(text(4), text(8)) for _ in range(n)]
    pairs += [(pairs[0][0], text(8)), (pairs[1][0], text(8))]  # two queries with a second positive
    return pairs, [text(8) for _ in range(extra)]


def _theirs(st_dir, pairs, corpus, **kw):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    ds = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    out = st_mine(ds, SentenceTransformer(str(st_dir), device="cpu"), corpus=list(corpus) or None,
                  output_format="n-tuple", verbose=False, batch_size=8, **kw)
    n = kw.get("num_negatives", 3)
    return {(r["query"], r["positive"]): [r[f"negative_{i}"] for i in range(1, n + 1)] for r in out}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("options", [
    {},
    {"num_negatives": 2, "range_min": 3},
    {"num_negatives": 4, "relative_margin": 0.02},
    {"absolute_margin": 0.0, "max_score": 0.995},
    {"num_negatives": 2, "min_score": 0.9, "range_max": 12},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_the_same_negatives_as_sentence_transformers(st_dir, options):
    pairs, corpus = _pairs()
    want = _theirs(st_dir, pairs, corpus, **options)
    rep = MiningReport()
    got = mine_hard_negatives(pairs, embedder=load_embedder(str(st_dir), device="cpu"), corpus=corpus,
                              report=rep, **options)
    assert {(r["query"], r["positive"]): r["negatives"] for r in got} == want
    assert [(r["query"], r["positive"]) for r in got] == [p for p in pairs if p in want]  # the pairs' order
    assert rep.records == len(want) and rep.short == len(pairs) - len(want)
    for r in got:  # never a positive of the same query
        assert not {p for q, p in pairs if q == r["query"]} & set(r["negatives"])


def test_bm25_mining_takes_the_best_scoring_non_positives():
    pairs = [("rotate the signing keys", "keys rotate every ninety days"),
             ("deploy rollback router", "rollbacks flip the router back"),
             ("page the on call engineer", "pages go to the primary engineer")]
    corpus = ["signing keys live in the vault", "the router serves the blue colour", "keys and keys and keys",
              "the engineer on call writes the report", "nothing relevant at all here"]
    rep = MiningReport()
    got = mine_hard_negatives(pairs, corpus=corpus, num_negatives=2, report=rep, keep_short=True)
    passages = list(dict.fromkeys([*corpus, *(p for _, p in pairs)]))
    index = BM25Index.build(passages)
    for (q, p), r in zip(pairs, got):
        ranked = [passages[i] for i, _ in index.search([q], k=len(passages))[0] if passages[i] != p]
        assert r["negatives"] == ranked[:2]
    scores = index.scores([q for q, _ in pairs])
    for row, (q, _) in zip(scores, pairs):  # scores() is search()'s numbers for every passage
        assert {i: s for i, s in index.search([q], k=len(passages))[0]} == {
            i: pytest.approx(s) for i, s in enumerate(row) if s > 0}


def test_short_records_random_sampling_and_errors():
    pairs = [("keys vault", "rotate keys"), ("vault keys", "the vault")]
    assert mine_hard_negatives(pairs, num_negatives=1, max_score=-1.0) == []  # every candidate over max_score
    rep = MiningReport()
    kept = mine_hard_negatives(pairs, num_negatives=1, max_score=-1.0, keep_short=True, report=rep)
    assert [r["negatives"] for r in kept] == [[], []] and rep.short == 2 and rep.skipped["max_score"] > 0
    corpus = [f"keys number {i}" for i in range(30)]
    a = mine_hard_negatives(pairs, corpus=corpus, num_negatives=3, range_max=20, sampling_strategy="random", seed=1)
    b = mine_hard_negatives(pairs, corpus=corpus, num_negatives=3, range_max=20, sampling_strategy="random", seed=1)
    top = mine_hard_negatives(pairs, corpus=corpus, num_negatives=3, range_max=20)
    assert a == b and a != top and all(len(r["negatives"]) == 3 for r in a)
    with pytest.raises(ValueError, match="num_negatives must be at least 1"):
        mine_hard_negatives(pairs, num_negatives=0)
    with pytest.raises(ValueError, match="range_min must be smaller than range_max"):
        mine_hard_negatives(pairs, range_min=5, range_max=5)
    with pytest.raises(ValueError, match="unknown sampling_strategy"):
        mine_hard_negatives(pairs, sampling_strategy="best")  # type: ignore[arg-type]


def test_cli_writes_records_the_trainer_reads(tmp_path):
    from data.tokenizer import ByteTokenizer
    from rl.contrastive import build_text_pair_dataloader

    src = tmp_path / "pairs.jsonl"
    rows = [{"query": f"where is the {w} kept", "positive": f"the {w} is kept in drawer {i}"}
            for i, w in enumerate(["key", "badge", "laptop", "charger", "ledger", "stamp"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "train.jsonl"
    r = subprocess.run([sys.executable, "-m", "rag", "mine", "--pairs", str(src), "--out", str(out),
                        "--negatives", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "6 of 6 pairs with hard negatives by BM25" in r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["query"], x["positive"]) for x in records] == [(x["query"], x["positive"]) for x in rows]
    assert all(len(x["negatives"]) == 2 and x["positive"] not in x["negatives"] for x in records)
    batch = next(iter(build_text_pair_dataloader(out, batch_size=2, seq_len=64, tokenizer=ByteTokenizer(),
                                                 shuffle=False)))
    assert batch.input_ids.shape[0] == 2 * (2 + 2)  # each record: query, positive, two negatives
    assert (batch.labels == -100).all(1).sum() == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "only"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected"):
        read_pairs(bad)
    r = subprocess.run([sys.executable, "-m", "rag", "mine", "--pairs", str(bad), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and not (tmp_path / "x").exists()
