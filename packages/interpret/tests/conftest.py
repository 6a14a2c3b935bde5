"""Tiny random transformers models (Llama, GPT-2) saved with a byte-level BPE tokenizer, and the same weights
loaded as lmstack TransformerLMs."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

TEXTS = ["The Eiffel Tower is in the city of Paris", "the quick brown fox jumps over the lazy dog",
         "interpretability reads the residual stream layer by layer"]


def pytest_configure(config):
    torch.set_num_threads(1)


def make_tokenizer(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    """(transformers LlamaForCausalLM, the same weights as TransformerLM, its directory)."""
    from model.lm import TransformerLM

    d = tmp_path_factory.mktemp("llama")
    make_tokenizer(d)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   initializer_range=0.2, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    hf = transformers.LlamaForCausalLM.from_pretrained(d).eval()
    return hf, TransformerLM.from_pretrained(d).eval(), d


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
    from model.lm import TransformerLM

    d = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    hf = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    return hf, TransformerLM.from_pretrained(d).eval(), d


@pytest.fixture()
def ids():
    return torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
