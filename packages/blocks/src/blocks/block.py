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

from collections.abc import Callable

import torch
from torch import nn

from attn.attention import Attention
from attn.context import AttentionContext
from blocks.mlp import SwiGLU, make_mlp
from blocks.norms import RMSNorm, make_norm
from kernel import default_registry, resolve
from kernel.reference import decode_layer_counters
from specs.config import ModelConfig
from specs.errors import ConfigError
from tensor.folded import refuse_state_dict
from tensor.fused import is_fused
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
        self.layer_kernel: str | None = None  # use_layer_kernel
        self.register_buffer("layer_counters", None, persistent=False)  # decode_layer's workspace, when used

    def forward(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        if self.layer_kernel is not None:
            if self._one_token_decode(x_BTD, ctx):
                return self._decode_layer(x_BTD, ctx)
            if getattr(ctx.cache, "fixed_shape", False) and not torch.compiler.is_compiling():
                self._layer_op(x_BTD)  # resolved now (eager prefill): compiled decode steps find it (fullgraph)
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

    def use_layer_kernel(self, impl: str | None = "auto") -> None:
        """Run one-token decode steps of one row over a fixed-shape cache (``FixedKVCache``) as the kernel
        registry's ``decode_layer`` op under ``impl`` (on CUDA the Triton kernel that runs the whole layer in one
        persistent launch); other calls (prefill, batches, paged caches) keep the per-op path. Needs a folded
        Llama layer with fused projections (:meth:`layer_kernel_unsupported` says why not); None turns it off.
        The layer keeps the op's zeroed ``layer_counters`` workspace (a non-persistent buffer)."""
        if impl is None:
            self.layer_kernel = None
            return
        why = self.layer_kernel_unsupported()
        if why is not None:
            raise ConfigError("layer_kernel", why)
        default_registry().get("decode_layer", impl) if impl != "auto" else None  # a bad name fails here
        w = self.self_attn.o_proj.weight
        self.register_buffer("layer_counters", decode_layer_counters(self.self_attn.n_kv_heads, w.device),
                             persistent=False)
        self.layer_kernel = impl

    def layer_kernel_unsupported(self) -> str | None:
        """Why :meth:`use_layer_kernel` cannot apply to this layer, or None when it can: the norms must be folded
        (``fold_norms``), q/k/v and gate/up fused (``fuse_projections``), silu, no biases, and every projection
        a float Linear of one dtype (not quantized)."""
        if not self.norms_folded:
            return "the layer kernel runs folded layers: call fold_norms() first"
        attn, mlp = self.self_attn, self.mlp
        if not (is_fused(attn, "qkv_proj") and is_fused(mlp, "gate_up_proj")):
            return "the layer kernel reads fused projections: call fuse_projections() before fold_norms()"
        if getattr(mlp, "activation", None) != "silu":
            return f"the layer kernel computes SwiGLU (silu), got activation {getattr(mlp, 'activation', None)!r}"
        projections = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        weights = [getattr(m, "weight", None) for m in projections]
        if not all(isinstance(w, torch.Tensor) and w.is_floating_point() for w in weights):
            return "the layer kernel needs float projection weights (quantized layers keep the per-op path)"
        if len({w.dtype for w in weights}) != 1:
            return f"the projections must share one dtype, got {sorted(str(w.dtype) for w in weights)}"
        if any(getattr(m, "bias", None) is not None for m in projections):
            return "the layer kernel has no bias terms: projections with biases keep the per-op path"
        return None

    def _one_token_decode(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> bool:
        """Whether this call is one the layer kernel runs: one new token of one row, a mask-free decode step over
        a fixed-shape (not paged) cache that the kernel may write, RoPE, activations and cache in the weights'
        dtype."""
        dec = ctx.decode
        return (dec is not None and x_BTD.shape[0] == 1 and x_BTD.shape[1] == 1 and dec.block_table_BN is None
                and getattr(ctx.cache, "kernel_writes", False) and ctx.cos_BTDh is not None
                and x_BTD.dtype == self.self_attn.o_proj.weight.dtype == getattr(ctx.cache, "dtype", None))

    def _decode_layer(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        attn, mlp = self.self_attn, self.mlp
        k_cache, v_cache = ctx.cache.read(self.layer_idx)
        weights = (attn.qkv_proj.weight, attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight)
        return self._layer_op(x_BTD)(x_BTD, *weights, k_cache, v_cache, ctx.decode.lens_B, ctx.cos_BTDh[0, 0],
                                     ctx.sin_BTDh[0, 0], self.layer_counters, n_heads=attn.n_heads,
                                     eps_attn=attn.input_rms_eps, eps_mlp=mlp.input_rms_eps)

    def _layer_op(self, x: torch.Tensor) -> Callable[..., torch.Tensor]:
        return resolve("decode_layer", self.layer_kernel, device=x.device, dtype=x.dtype,
                       head_dim=self.self_attn.head_dim)

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
