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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("temperature", [0.05, 0.2])
def test_the_loss_is_multiple_negatives_ranking_loss(temperature):
    torch.manual_seed(0)
    q, p = torch.randn(6, 16, requires_grad=True), torch.randn(6, 16)
    want = MultipleNegativesRankingLoss(model=nn.Identity(), scale=1 / temperature).compute_loss_from_embeddings(
        [q, p], None)
    rows = torch.stack([q, p], 1).reshape(12, 16)  # query, positive, query, positive, ...
    ids = torch.zeros(12, 4, dtype=torch.long)
    got, stats = ContrastiveModule(_Given(rows), temperature)(ids, ids)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    (g_want,) = torch.autograd.grad(want, q)
    (g_got,) = torch.autograd.grad(got, q)
    torch.testing.assert_close(g_got, g_want)
    sim = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(p, dim=-1).T
    assert stats["similarity/positive"].item() == pytest.approx(sim.diagonal().mean().item(), rel=1e-5)
    assert stats["accuracy"].item() == pytest.approx((sim.argmax(1) == torch.arange(6)).float().mean().item())
    with pytest.raises(ValueError, match="got 3 rows"):
        ContrastiveModule(_Given(rows[:3]), temperature)(ids[:3], ids[:3])


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
