"""Shared fixtures: a small corpus and a tiny random lmstack encoder checkpoint with its byte tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rag.chunk import Document

CORPUS = {
    "keys.md": "# Key rotation\n\nRotate the signing keys every ninety days. The old key stays valid for a week so "
               "clients can refresh.\n\nKeys live in the vault under /secrets/signing.",
    "deploy.md": "# Deploying\n\nThe service deploys from the main branch through the blue-green pipeline. Rollbacks "
                 "flip the router back to the previous colour within a minute.",
    "oncall.md": "# On-call\n\nPages go to the primary engineer first, then to the secondary after fifteen minutes. "
                 "Escalate database incidents to the storage team.",
    "faq.txt": "Why is the cache cold after a deploy? Because each colour keeps its own cache; warm it with the "
               "preload job before flipping the router.",
}


WORDS = ["rotate", "the", "sign", "##ing", "keys", "a", "deploy", "##s", "flip", "router", "back", "within", "minute",
         ",", "then", "warm", "cache", "query", ":", "passage", "how", "do", "i", "vault", "page", "on", "call"]


def save_wordpiece_tokenizer(path: Path) -> int:
    """A BERT-style WordPiece tokenizer over WORDS saved at ``path`` (transformers' format); its vocab size."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    assert tok.convert_ids_to_tokens(tok("query: signing")["input_ids"]) == ["[CLS]", "query", ":", "sign", "##ing",
                                                                             "[SEP]"]
    tok.save_pretrained(path)
    return len(vocab)


@pytest.fixture
def docs() -> list[Document]:
    return [Document(k, v) for k, v in CORPUS.items()]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    from data.tokenizer import ByteTokenizer
    from model.encoder import TransformerEncoder
    from specs.presets import preset

    path = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    TransformerEncoder(preset("llama-debug", causal=False, arch="encoder", vocab_size=260)).save_pretrained(path)
    ByteTokenizer().save(path)
    return path


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (transformers' format) with the WordPiece tokenizer over WORDS."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert")
    vocab_size = save_wordpiece_tokenizer(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def st_dir(bert_dir, tmp_path_factory) -> Path:
    """``bert_dir`` as a sentence-transformers model (mean pooling, normalized, query/passage prompts)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import SentenceTransformer, models

        path = tmp_path_factory.mktemp("st")
        st = SentenceTransformer(modules=[models.Transformer(str(bert_dir), max_seq_length=16),
                                          models.Pooling(32, "mean"), models.Normalize()],
                                 prompts={"query": "query: ", "document": "passage: "})
        st.save(str(path))
    return path
