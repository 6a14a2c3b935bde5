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
