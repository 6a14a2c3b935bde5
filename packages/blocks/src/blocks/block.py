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
from blocks.mlp import SwiGLU, make_mlp
from blocks.norms import RMSNorm, make_norm
from specs.config import ModelConfig
from specs.errors import ConfigError
from tensor.folded import refuse_state_dict
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
        self.norms_folded = False

    def forward(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        if self.norms_folded:  # the projections normalise their input and add the residual (fold_norms)
            h_BTD = self.self_attn(x_BTD, ctx, residual=x_BTD)
            return self.mlp(h_BTD, residual=h_BTD)
        x_BTD = residual(x_BTD, self.input_layernorm, lambda h: self.dropout(self.self_attn(h, ctx)),
                         self.norm_position)
        return residual(x_BTD, self.post_attention_layernorm, lambda h: self.dropout(self.mlp(h)), self.norm_position)

    def fold_norms(self) -> None:
        """Inference only, in place: fold both RMSNorm weights into the projections that read them and let those
        projections normalise their input and add the residual stream (``tensor.folded``: a decode step then has
        no norm or add kernels). Needs pre-norm RMSNorm and SwiGLU; the folded block cannot be saved."""
        if not self._foldable_structure():
            raise ConfigError("fold_norms", "needs a pre-norm block with RMSNorm and SwiGLU (Llama's), got "
                                            f"norm_position={self.norm_position!r}, "
                                            f"{type(self.input_layernorm).__name__}, {type(self.mlp).__name__}")
        if self.norms_folded:
            return
        self.self_attn.fold_input_norm(self.input_layernorm.weight, self.input_layernorm.eps)
        self.mlp.fold_input_norm(self.post_attention_layernorm.weight, self.post_attention_layernorm.eps)
        self.norms_folded = True
        refuse_state_dict(self, "this model's norm weights are folded into its projections (fold_norms, for "
                                "inference); save the model before folding it")

    def can_fold_norms(self) -> bool:
        """True when :meth:`fold_norms` applies (or already has): a pre-norm block with RMSNorm and SwiGLU whose
        projections that read the norms still have float weights (folding comes before quantizing)."""
        if self.norms_folded:
            return True
        if not self._foldable_structure():
            return False
        readers = [*self.self_attn.norm_readers(), *self.mlp.norm_readers()]
        return all(isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.is_floating_point()
                   for m in readers)

    def _foldable_structure(self) -> bool:
        norms_ok = all(isinstance(n, RMSNorm) for n in (self.input_layernorm, self.post_attention_layernorm))
        return self.norm_position == "pre" and norms_ok and isinstance(self.mlp, SwiGLU)

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
