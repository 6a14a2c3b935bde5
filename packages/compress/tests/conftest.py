"""Fixtures the LoRA tests share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A random tiny transformers LlamaForCausalLM (GQA, untied) saved as safetensors."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.2, tie_word_embeddings=False)
    d = tmp_path_factory.mktemp("hf")
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d
