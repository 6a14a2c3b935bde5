"""Named ModelConfig presets: plain functions in a dict. Every family has a tiny ``debug`` preset for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from specs.config import ModelConfig
from specs.errors import ConfigError, suggest


def llama(**kw: Any) -> ModelConfig:
    """Llama family defaults: RMSNorm, SwiGLU, RoPE, no biases, untied head."""
    base: dict[str, Any] = dict(
        norm="rmsnorm",
        mlp="swiglu",
        activation="silu",
        pos_encoding="rope",
        bias=False,
        tie_embeddings=False,
        norm_eps=1e-5,
    )
    return ModelConfig(**{**base, **kw})


def gpt2(**kw: Any) -> ModelConfig:
    """GPT-2 family defaults: LayerNorm, GELU(tanh) MLP, learned positions, biases, tied head."""
    base: dict[str, Any] = dict(
        norm="layernorm",
        mlp="mlp",
        activation="gelu_tanh",
        pos_encoding="learned",
        bias=True,
        tie_embeddings=True,
        norm_eps=1e-5,
        max_seq_len=1024,
    )
    return ModelConfig(**{**base, **kw})


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "llama-debug": lambda: llama(
        d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172, vocab_size=512, max_seq_len=256
    ),
    "gpt2-debug": lambda: gpt2(d_model=64, n_heads=4, n_layers=2, d_ff=256, vocab_size=512, max_seq_len=256),
    "llm-small": lambda: llama(d_model=512, n_heads=8, n_layers=8, d_ff=2048, vocab_size=32000, max_seq_len=1024),
    "gpt2-124m": lambda: gpt2(d_model=768, n_heads=12, n_layers=12, d_ff=3072, vocab_size=50304),
    "llama-1b": lambda: llama(
        d_model=2048, n_heads=32, n_kv_heads=4, n_layers=22, d_ff=5632, vocab_size=32000, max_seq_len=2048
    ),
}
PRESETS["debug"] = PRESETS["llama-debug"]


def preset(name: str, **overrides: Any) -> ModelConfig:
    """``preset("gpt2-124m")``; keyword overrides replace fields."""
    if name not in PRESETS:
        raise ConfigError(
            "model.preset", f"unknown preset {name!r}{suggest(name, PRESETS)}; valid: {', '.join(PRESETS)}"
        )
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg
