"""Transformer blocks: attention and feed-forward sublayers wired around the residual stream.

``TransformerBlock`` builds its norms and MLP from the config and wires them with the ``cfg.norm_position`` policy
(:func:`tensor.residual.residual`): pre-norm ``x + f(norm(x))`` (GPT-2, Llama; Xiong et al. 2020,
arXiv:2002.04745) or post-norm ``norm(x + f(x))`` (Vaswani et al. 2017, BERT). ``LlamaBlock`` (Touvron et al.
2023, arXiv:2302.13971) and ``GPTBlock`` (Radford et al. 2019) pin their family's choices whatever the config says
about them. Submodule names are Hugging Face Llama's (``input_layernorm``, ``self_attn``,
``post_attention_layernorm``, ``mlp``), so a Llama layer's state dict loads by name.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import torch
from torch import nn

from attn.attention import Attention
from attn.context import AttentionContext
from blocks.mlp import make_mlp
from blocks.norms import make_norm
from specs.config import ModelConfig
from tensor.residual import residual


class TransformerBlock(nn.Module):
    """One layer: attention then feed-forward, each a residual branch (dropout ``cfg.dropout`` on its output)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm_position = cfg.norm_position
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = make_mlp(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        x_BTD = residual(x_BTD, self.input_layernorm, lambda h: self.dropout(self.self_attn(h, ctx)),
                         self.norm_position)
        return residual(x_BTD, self.post_attention_layernorm, lambda h: self.dropout(self.mlp(h)), self.norm_position)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, norm_position={self.norm_position!r}"


LLAMA_CHOICES = dict(norm="rmsnorm", mlp="swiglu", activation="silu", norm_position="pre")
GPT_CHOICES = dict(norm="layernorm", mlp="mlp", activation="gelu_tanh", norm_position="pre")


class LlamaBlock(TransformerBlock):
    """Pre-norm RMSNorm + SwiGLU block; RoPE and GQA come from the config (``pos_encoding``, ``n_kv_heads``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__(cfg.replace(**LLAMA_CHOICES), layer_idx)


class GPTBlock(TransformerBlock):
    """Pre-norm LayerNorm + GELU(tanh) MLP block, as in GPT-2 (biases follow ``cfg.bias``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__(cfg.replace(**GPT_CHOICES), layer_idx)


def make_block(cfg: ModelConfig, layer_idx: int) -> TransformerBlock:
    """The block for layer ``layer_idx`` of a model built from ``cfg``."""
    return TransformerBlock(cfg, layer_idx)
