"""Shared fixtures: tiny random-weight Hugging Face models imported into TransformerLM, and a small BPE tokenizer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

TEXT = ("The quick brown fox jumps over the lazy dog. Naïve café déjà vu — 東京 ✓. " * 3 +
        "Serving language models means decoding tokens fast and freeing memory early. ") * 20


def pytest_configure(config):
    # Tiny matmuls on a shared 2-core machine: one intra-op thread avoids oversubscription (40x faster here).
    torch.set_num_threads(1)


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn socket in a thread; yields its base URL and stops it on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def hf_llama(tmp_path_factory, vocab_size: int = 300, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.lm import TransformerLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(d)
    return hf, TransformerLM.from_pretrained(d).eval(), d


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory):
    """(transformers LlamaForCausalLM, the same weights as TransformerLM, its directory)."""
    return hf_llama(tmp_path_factory)


@pytest.fixture(scope="session")
def gpt2_pair(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.lm import TransformerLM

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
                     bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(d)
    return hf, TransformerLM.from_pretrained(d).eval(), d


@pytest.fixture(scope="session")
def tokenizer():
    from data.tokenizer import train_bpe

    return train_bpe([TEXT], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def tiny_lm():
    """A llama-debug TransformerLM built through the resolver path's class (vocab 512)."""
    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug", vocab_size=300, init_std=0.2)).eval()
