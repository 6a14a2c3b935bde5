"""Shared fixtures: lmstack's TransformerLM (llama-debug), a protocol-only stand-in (tiny_lm.TinyLM), helpers."""

from __future__ import annotations

import pytest
import torch

from specs.presets import preset


@pytest.fixture(scope="session")
def tiny_cfg():
    return preset("llama-debug", vocab_size=128, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    from tiny_lm import TinyLM

    torch.manual_seed(0)
    return TinyLM(tiny_cfg).eval()


@pytest.fixture(scope="session")
def lm():
    """model.lm.TransformerLM on the llama-debug preset (GQA, RoPE, SwiGLU): 2 layers, KVH 2, Dh 16, V 512."""
    from model.lm import TransformerLM

    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug")).eval()


def ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
