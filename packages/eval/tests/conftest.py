"""Shared fixtures: a tiny random TransformerLM, a small BPE tokenizer, and a checkpoint directory holding both."""

from __future__ import annotations

import shutil

import pytest
import torch

TEXT = ("The quick brown fox jumps over the lazy dog. Naïve café déjà vu — 東京 ✓. Question: Answer: " * 3 +
        "Serving language models means decoding tokens fast and freeing memory early.\n") * 20


def pytest_configure(config):
    # Tiny matmuls on a shared 2-core machine: one intra-op thread avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from data.tokenizer import train_bpe

    return train_bpe([TEXT], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def tiny_lm():
    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug", vocab_size=300, init_std=0.1)).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_lm, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    tiny_lm.save_pretrained(root / "tiny")
    tokenizer.save(root / "tok")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "tiny" / f.name)
    return root / "tiny"
