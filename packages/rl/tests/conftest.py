"""A tiny Llama (transformers, random weights) and a tiny byte-level BPE tokenizer with Llama's BOS post-processor,
saved where both transformers/TRL and lmstack can load them."""

from __future__ import annotations

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?", "preference data for dpo",
         "a chosen answer and a rejected one", "the model learns which completion people prefer"]


def make_tokenizer(directory):
    """tokenizer.json + tokenizer_config.json (BOS <s> added by the post-processor, EOS </s>, pad <pad>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 0)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """(policy dir, reference dir): two random tiny Llamas (GQA, untied) with the tokenizer beside them."""
    root = tmp_path_factory.mktemp("llama")
    make_tokenizer(root / "policy")
    vocab = len(transformers.PreTrainedTokenizerFast.from_pretrained(root / "policy"))
    out = []
    for i, name in enumerate(("policy", "reference")):
        torch.manual_seed(i)
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       initializer_range=0.2, tie_word_embeddings=False)
        transformers.LlamaForCausalLM(cfg).save_pretrained(root / name)
        if name == "reference":
            make_tokenizer(root / name)
        out.append(root / name)
    return tuple(out)


WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """48 text pairs: a yes/no question about a fruit, the right answer chosen."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with open(path, "w") as f:
        for _ in range(48):
            w = rng.choice(WORDS)
            f.write(json.dumps({"prompt": f"Is {w} a fruit? ", "chosen": f"Yes, {w} is a fruit.",
                                "rejected": f"No idea about {w}."}) + "\n")
    return path
