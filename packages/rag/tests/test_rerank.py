"""The cross-encoder reranker against sentence-transformers' CrossEncoder, and re-ranked search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_wordpiece_tokenizer

from rag.index import RagIndex
from rag.rerank import CrossEncoderReranker
from specs.errors import ConfigError

PASSAGES = ["rotate the signing keys then warm the cache", "page on call", "deploys flip the router back",
            "keys in the vault", "a minute"]


@pytest.fixture(scope="module")
def cross_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("cross")
    vocab_size = save_wordpiece_tokenizer(path)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                             num_labels=1, initializer_range=0.5)).save_pretrained(path)
    return path


def test_scores_are_sentence_transformers_cross_encoder_logits(cross_dir):
    from sentence_transformers import CrossEncoder

    ours = CrossEncoderReranker(cross_dir, device="cpu", batch_size=2).score("how do i rotate keys", PASSAGES)
    want = CrossEncoder(str(cross_dir), device="cpu", activation_fn=torch.nn.Identity()).predict(
        [("how do i rotate keys", p) for p in PASSAGES])
    np.testing.assert_allclose(ours, want, atol=1e-5)
    assert len(set(np.round(ours, 5))) == len(PASSAGES)  # a real ordering to check below


def test_reranked_search(tmp_path, docs, cross_dir):
    idx = RagIndex.build(docs, tmp_path / "idx", chunk_size=60, chunk_overlap=0)
    reranker = CrossEncoderReranker(cross_dir, device="cpu")
    pool = idx.search("rotate the signing keys", k=10)
    got = idx.search("rotate the signing keys", k=3, reranker=reranker, rerank_depth=10)
    scores = reranker.score("rotate the signing keys", [h.chunk.text for h in pool])
    want = [pool[i].chunk.id for i in np.argsort(-scores, kind="stable")[:3]]
    assert [h.chunk.id for h in got] == want
    assert [h.ranks["rerank"] for h in got] == [1, 2, 3] and all("bm25" in h.ranks for h in got)
    assert got[0].score == pytest.approx(float(scores.max()), abs=1e-5)


def test_a_classifier_with_several_outputs_is_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    vocab_size = save_wordpiece_tokenizer(tmp_path)
    BertForSequenceClassification(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32,
                                             num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has 3 outputs"):
        CrossEncoderReranker(tmp_path)


def test_cli_reranks(tmp_path, docs, cross_dir, capsys):
    import json

    from rag.__main__ import main

    RagIndex.build(docs, tmp_path / "idx", chunk_size=60, chunk_overlap=0)
    assert main(["query", str(tmp_path / "idx"), "rotate the signing keys", "-k", "2", "--rerank", str(cross_dir),
                 "--rerank-depth", "8", "--device", "cpu", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["ranks"]["rerank"] for h in hits] == [1, 2] and hits[0]["score"] >= hits[1]["score"]
    assert main(["query", str(tmp_path / "idx"), "x", "--rerank", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
