"""Contrastive embedding training (``train.preference.method: contrastive``, ``data.dataset: text_pairs``): the
loss is sentence-transformers' MultipleNegativesRankingLoss, the loader pairs and resumes, and a train.run from
scratch learns to retrieve each query's passage."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import nn

from data.tokenizer import ByteTokenizer
from model.encoder import TransformerEncoder
from rl.contrastive import ContrastiveModule, build_text_pair_dataloader
from specs.errors import ConfigError
from train.run import cli

ANIMALS = ["cat", "dog", "owl", "fox", "bee", "elk", "yak", "ant", "bat", "cod", "eel", "emu", "gnu", "hen", "jay",
           "koi", "ram", "ray", "sow", "tit"]
COLORS = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory):
    rng = random.Random(0)
    pairs = [{"query": f"where does the {c} {a} live", "positive": f"the {c} {a} lives in house {i}"}
             for i, (a, c) in enumerate((a, c) for a in ANIMALS for c in COLORS)]
    rng.shuffle(pairs)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path, pairs


class _Given(nn.Module):
    """A stand-in encoder whose embed() returns fixed rows, so both losses see the same embeddings."""

    def __init__(self, emb_BD: torch.Tensor):
        super().__init__()
        self.emb_BD = emb_BD

    def embed(self, ids, mask, normalize=True):
        return nn.functional.normalize(self.emb_BD, dim=-1)


def _records(*columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (query, positive, negatives...) record by record from sentence-transformers' columns, and labels that
    mark the query rows (all -100) as the loader does."""
    n, k = columns[0].shape[0], len(columns)
    rows = torch.stack(columns, 1).reshape(n * k, -1)
    labels = torch.zeros(n * k, 4, dtype=torch.long)
    labels[0::k] = -100
    return rows, labels


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("temperature", [0.05, 0.2])
@pytest.mark.parametrize("negatives", [0, 1, 3])
def test_the_loss_is_multiple_negatives_ranking_loss(temperature, negatives):
    """Pairs, and (anchor, positive, negative_1..k) columns: sentence-transformers' loss and gradient."""
    torch.manual_seed(0)
    q = torch.randn(6, 16, requires_grad=True)
    docs = [torch.randn(6, 16) for _ in range(1 + negatives)]
    want = MultipleNegativesRankingLoss(model=nn.Identity(), scale=1 / temperature).compute_loss_from_embeddings(
        [q, *docs], None)
    rows, labels = _records(q, *docs)
    ids = torch.zeros_like(labels)
    got, stats = ContrastiveModule(_Given(rows), temperature)(ids, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    (g_want,) = torch.autograd.grad(want, q)
    (g_got,) = torch.autograd.grad(got, q)
    torch.testing.assert_close(g_got, g_want)
    qn, pn = nn.functional.normalize(q, dim=-1), nn.functional.normalize(docs[0], dim=-1)
    sim = qn @ torch.cat([nn.functional.normalize(d, dim=-1) for d in docs]).T  # positives first, as ST orders
    assert stats["similarity/positive"].item() == pytest.approx((qn * pn).sum(1).mean().item(), rel=1e-5)
    assert stats["accuracy"].item() == pytest.approx((sim.argmax(1) == torch.arange(6)).float().mean().item())
    if negatives:
        own = torch.stack([(qn * nn.functional.normalize(d, dim=-1)).sum(1) for d in docs[1:]])
        assert stats["similarity/hard_negative"].item() == pytest.approx(own.mean().item(), rel=1e-5)
    else:
        assert "similarity/hard_negative" not in stats
    with pytest.raises(ConfigError, match="start or end inside"):
        ContrastiveModule(_Given(rows[1:]), temperature)(ids[1:], labels[1:])  # starts inside a record


def test_records_may_carry_different_numbers_of_negatives():
    """Ragged records: every query against every candidate of the micro-batch, by the textbook formula."""
    torch.manual_seed(1)
    sizes = [0, 2, 1, 3]  # negatives per record
    emb = [torch.randn(2 + k, 8) for k in sizes]
    rows = torch.cat(emb)
    labels = torch.zeros(rows.shape[0], 4, dtype=torch.long)
    starts = torch.tensor([0, *torch.cumsum(torch.tensor([2 + k for k in sizes]), 0)[:-1].tolist()])
    labels[starts] = -100
    got, stats = ContrastiveModule(_Given(rows), 0.1)(torch.zeros_like(labels), labels)
    norm = nn.functional.normalize(rows, dim=-1)
    cand = torch.ones(rows.shape[0], dtype=torch.bool)
    cand[starts] = False
    logits = norm[starts] @ norm[cand].T / 0.1
    target = torch.tensor([int(cand[:s + 1].sum()) for s in starts.tolist()])  # the positive follows its query
    want = -(logits.log_softmax(1)[torch.arange(4), target]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    from rl.contrastive import Contrastive
    assert int(Contrastive.units(labels)) == 4


def test_the_loader_alternates_query_and_positive_and_resumes(text_pairs):
    path, pairs = text_pairs
    tok = ByteTokenizer()
    dl = build_text_pair_dataloader(path, batch_size=4, seq_len=40, tokenizer=tok, seed=3)
    assert dl.paired and len(dl) == 40
    it = iter(dl)
    first = next(it)
    by_query = {p["query"]: p["positive"] for p in pairs}
    texts = [tok.decode([t for t, m in zip(row, mask) if m]) for row, mask in
             zip(first.input_ids.tolist(), first.attention_mask.tolist())]
    assert all(by_query[q] == p for q, p in zip(texts[0::2], texts[1::2]))
    assert first.input_ids.shape[0] == 8 and (first.labels[first.attention_mask == 0] == -100).all()
    assert (first.labels[0::2] == -100).all() and torch.equal(first.labels[1::2][first.attention_mask[1::2] == 1],
                                                               first.input_ids[1::2][first.attention_mask[1::2] == 1])
    cut = build_text_pair_dataloader(path, batch_size=4, seq_len=10, tokenizer=tok, seed=3)
    assert next(iter(cut)).input_ids.shape[1] == 10  # every text cut to seq_len
    state = dl.state_dict()
    again = build_text_pair_dataloader(path, batch_size=4, seq_len=40, tokenizer=tok, seed=3)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again)).input_ids, next(it).input_ids)


def test_bad_records_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n{"anchor": "c"}\n')
    with pytest.raises(ConfigError, match=r"p.jsonl:2: needs a non-empty text 'positive'"):
        build_text_pair_dataloader(path, batch_size=1)
    path.write_text('{"query": "a", "positive": "b", "negatives": ["c", ""]}\n')
    with pytest.raises(ConfigError, match=r"p.jsonl:1: a hard negative must be a non-empty text, got ''"):
        build_text_pair_dataloader(path, batch_size=1)


def test_the_loader_keeps_each_records_negatives_after_its_positive(tmp_path):
    recs = [{"query": "q0", "positive": "p0", "negative": "n0"},
            {"anchor": "q1", "positive": "p1", "negatives": ["n1a", "n1b"]},
            {"query": "q2", "positive": "p2"},
            {"query": "q3", "positive": "p3", "negative_2": "n3b", "negative_1": "n3a", "negative": ["n3"]}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = ByteTokenizer()
    b = next(iter(build_text_pair_dataloader(path, batch_size=4, seq_len=16, tokenizer=tok, shuffle=False)))
    texts = [tok.decode([t for t, m in zip(row, mask) if m]) for row, mask in
             zip(b.input_ids.tolist(), b.attention_mask.tolist())]
    assert texts == ["q0", "p0", "n0", "q1", "p1", "n1a", "n1b", "q2", "p2", "q3", "p3", "n3", "n3a", "n3b"]
    assert (b.labels == -100).all(1).tolist() == [t.startswith("q") for t in texts]


def _config(tmp_path, path, **over):
    doc = {"name": "embed",
           "model": {"arch": "encoder", "causal": False, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
                     "d_ff": 172, "vocab_size": 320, "max_seq_len": 64},
           "data": {"dataset": "text_pairs", "path": str(path), "tokenizer": "byte", "seq_len": 48,
                    "batch_size": 16, "pack": False, "val_fraction": 0.25},
           "train": {"steps": 40, "lr": 3e-3, "warmup_steps": 4, "log_every": 10, "eval_every": 40, "eval_steps": 2,
                     "callbacks": [], "preference": {"method": "contrastive"}},
           "viz": {"backend": ["csv"], "log_every": 10}}
    for key, value in over.items():
        section, field = key.split("__")
        doc[section][field] = value
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return str(cfg)


@torch.no_grad()
def _top1(enc, pairs):
    tok = ByteTokenizer()

    def embed(texts):
        rows = [tok.encode(t) for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        return enc.embed(ids, mask, normalize=True)

    sim = embed([p["query"] for p in pairs]) @ embed([p["positive"] for p in pairs]).T
    return (sim.argmax(1) == torch.arange(len(pairs))).float().mean().item()


def test_a_train_run_learns_to_retrieve(text_pairs, tmp_path):
    path, pairs = text_pairs
    out = tmp_path / "out"
    assert cli(["--config", _config(tmp_path, path), "--train.out_dir", str(out)]) == 0
    enc = TransformerEncoder.from_pretrained(out / "checkpoints" / "step_00000040").eval()
    torch.manual_seed(0)
    untrained = TransformerEncoder(enc.config).eval()
    assert _top1(untrained, pairs) < 0.5 and _top1(enc, pairs) > 0.9  # 160 candidates each
    with open(out / "logs" / "scalars.csv") as f:
        tags = {line.split(",")[1] for line in f}
    assert {"accuracy", "similarity/positive", "eval/accuracy", "eval/loss"} <= tags


def test_a_train_run_with_hard_negatives(text_pairs, tmp_path, capsys):
    """Each record's hard negative is another house of the same animal; micro-batches of 3 rows (one record each:
    an odd count, which pairs would refuse) train, and a split record stops the run with the field to change."""
    path, pairs = text_pairs
    by_animal: dict[str, list[str]] = {}
    for p in pairs:
        by_animal.setdefault(p["query"].split()[-2], []).append(p["positive"])
    recs = [{**p, "negative": next(x for x in by_animal[p["query"].split()[-2]] if x != p["positive"])}
            for p in pairs]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    cfg = _config(tmp_path, triplets, data__batch_size=8, train__steps=6, train__eval_every=6, train__grad_accum=8,
                  train__log_every=3, viz__log_every=3)
    assert cli(["--config", cfg, "--train.out_dir", str(out)]) == 0
    with open(out / "logs" / "scalars.csv") as f:
        tags = {line.split(",")[1] for line in f}
    assert {"similarity/hard_negative", "eval/similarity/hard_negative"} <= tags
    ragged = tmp_path / "ragged.jsonl"  # records of 2 and 4 rows: a mixed batch of two splits one record in two
    ragged.write_text("".join(json.dumps({"query": r["query"], "positive": r["positive"],
                                          "negatives": [r["negative"]] * 2 * (i % 2)}) + "\n"
                              for i, r in enumerate(recs)))
    bad = _config(tmp_path, ragged, data__batch_size=2, train__steps=20, train__eval_every=0, train__grad_accum=2)
    capsys.readouterr()
    assert cli(["--config", bad, "--train.out_dir", str(tmp_path / "bad")]) == 2
    assert "train.grad_accum: a contrastive micro-batch holds whole records" in capsys.readouterr().err


@pytest.mark.parametrize("over, field", [
    ({"model__arch": "transformer", "model__causal": True}, "model.arch"),
    ({"train__preference": {"method": "contrastive", "beta": 0.5}}, "train.preference.beta"),
    ({"train__preference": {"method": "dpo", "temperature": 0.1}}, "train.preference.temperature"),
])
def test_bad_configs_stop_before_any_work(text_pairs, tmp_path, capsys, over, field):
    path, _ = text_pairs
    assert cli(["--config", _config(tmp_path, path, **over), "--train.out_dir", str(tmp_path / "o")]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
