"""Embedders against sentence-transformers and the encoder's own embed(); the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rag.cache import CachedEmbedder, EmbeddingCache
from rag.embed import HFEmbedder, LmstackEmbedder, load_embedder
from specs.errors import ConfigError

TEXTS = ["rotate the signing keys", "a", "deploys flip the router back within a minute, then warm the cache"]


@pytest.mark.filterwarnings("ignore:Importing from 'sentence_transformers.models':DeprecationWarning")
@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_hf_embedder_matches_sentence_transformers(tmp_path, bert_dir, pooling):
    from sentence_transformers import SentenceTransformer, models

    st_dir = tmp_path / "st"
    tf = models.Transformer(str(bert_dir), max_seq_length=16)
    st = SentenceTransformer(modules=[tf, models.Pooling(32, pooling), models.Normalize()],
                             prompts={"query": "query: ", "document": "passage: "})
    st.save(str(st_dir))
    ours = load_embedder(str(st_dir), device="cpu")  # a bare directory with modules.json: hf
    assert isinstance(ours, HFEmbedder) and ours.dim == 32
    for kind in ("query", "document"):
        want = SentenceTransformer(str(st_dir), device="cpu").encode(TEXTS, prompt_name=kind,
                                                                     normalize_embeddings=True)
        np.testing.assert_allclose(ours.embed(TEXTS, kind=kind), want, atol=2e-5)
    assert not np.allclose(ours.embed(TEXTS[:1], kind="query"), ours.embed(TEXTS[:1], kind="document"))


def test_lmstack_embedder_is_the_encoders_embed(encoder_dir):
    from data.tokenizer import ByteTokenizer
    from model.encoder import TransformerEncoder

    emb = load_embedder(f"lmstack:{encoder_dir}", device="cpu", batch_size=2)
    assert isinstance(emb, LmstackEmbedder)
    got = emb.embed(TEXTS)
    enc, tok = TransformerEncoder.from_pretrained(encoder_dir).eval(), ByteTokenizer()
    for text, row in zip(TEXTS, got):  # each alone, no padding: the batch's padding must change nothing
        with torch.no_grad():
            want = enc.embed(torch.tensor([tok.encode(text)]), normalize=True)[0].numpy()
        np.testing.assert_allclose(row, want, atol=1e-5)
    assert np.linalg.norm(got, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_a_causal_lm_is_not_an_embedder(tmp_path):
    from model.lm import TransformerLM
    from specs.presets import preset

    TransformerLM(preset("llama-debug")).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="holds a 'transformer' model; dense retrieval needs an embedding model"):
        load_embedder(f"lmstack:{tmp_path}")


class Counting:
    spec, fingerprint, dim = "count:", "f1", 3

    def __init__(self):
        self.seen: list[str] = []

    def embed(self, texts, *, kind="document"):
        self.seen += list(texts)
        return np.array([[len(t), ord(t[0]), 1.0 if kind == "query" else 2.0] for t in texts], np.float32)


def test_cache_embeds_each_text_once_and_persists(tmp_path):
    inner = Counting()
    cached = CachedEmbedder(inner, EmbeddingCache(tmp_path / "c.db"))
    first = cached.embed(["ab", "cd", "ab"])
    assert inner.seen == ["ab", "cd"] and (cached.hits, cached.misses) == (0, 3)
    again = CachedEmbedder(inner, EmbeddingCache(tmp_path / "c.db"))  # a new process would see the same file
    np.testing.assert_array_equal(again.embed(["cd", "ab", "ef"]), inner.embed(["cd", "ab", "ef"]))
    assert inner.seen[2:] == ["ef", "cd", "ab", "ef"] and (again.hits, again.misses) == (2, 1)
    np.testing.assert_array_equal(first, inner.embed(["ab", "cd", "ab"]))
    assert CachedEmbedder(inner, again.cache).embed(["ab"], kind="query")[0, 2] == 1.0  # kinds are kept apart
    inner.fingerprint = "f2"
    other = CachedEmbedder(inner, again.cache)
    other.embed(["ab"])
    assert other.misses == 1  # another model's vectors are never served
    assert len(again.cache) == 5
