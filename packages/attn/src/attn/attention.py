"""Multi-head attention with any number of key/value heads: MHA (KVH = H), GQA (1 < KVH < H), MQA (KVH = 1).

GQA: Ainslie et al. 2023 (arXiv:2305.13245); MQA: Shazeer 2019 (arXiv:1911.02150). Projections are named as in
Hugging Face's LlamaAttention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) so Llama checkpoints load by name.
The attention op itself comes from the kernel registry (``kernel.resolve("attention", cfg.attn_impl, ...)``), RoPE
from the registry's ``rope`` op; masks, positions and ALiBi arrive precomputed in an
:class:`~attn.context.AttentionContext`, and new keys/values go through the context's KV cache.

Shape legend: B batch, T new tokens, S key slots, D model width, H query heads, KVH key/value heads, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attn.context import AttentionContext
from kernel import resolve
from specs.config import ModelConfig
from specs.tensor_spec import HIDDEN
from tensor.folded import fold_norm_weight, linear_with
from tensor.fused import fuse_linears, is_fused, split_output


class Attention(nn.Module):
    """Self-attention of layer ``layer_idx`` (the index it uses in a KV cache)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.attn_impl = cfg.attn_impl
        self.d_model = cfg.d_model
        D, H, KVH, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(D, H * Dh, bias=cfg.bias)
        self.k_proj = nn.Linear(D, KVH * Dh, bias=cfg.bias)
        self.v_proj = nn.Linear(D, KVH * Dh, bias=cfg.bias)
        self.o_proj = nn.Linear(H * Dh, D, bias=cfg.bias)
        self.input_rms_eps: float | None = None  # set by fold_input_norm
        # the decode_attention implementation of one-token steps (None: the config's attn_impl); a decode loop may
        # name one (serve's FastGenerator(decode_attention=...))
        self.decode_impl: str | None = None

    def forward(self, x_BTD: torch.Tensor, ctx: AttentionContext,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); plus ``residual`` (B, T, D) when given (added by the output projection)."""
        B, T, _ = x_BTD.shape
        HIDDEN.check(x_BTD, "x_BTD", D=self.d_model)
        eps = self.input_rms_eps
        if is_fused(self, "qkv_proj"):
            q_BTX, k_BTX, v_BTX = split_output(self, "qkv_proj", linear_with(self.qkv_proj, x_BTD, rms_eps=eps))
        else:
            q_BTX, k_BTX, v_BTX = (linear_with(self.q_proj, x_BTD, rms_eps=eps),
                                   linear_with(self.k_proj, x_BTD, rms_eps=eps),
                                   linear_with(self.v_proj, x_BTD, rms_eps=eps))
        q_BHTDh = q_BTX.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BKTDh = k_BTX.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BKTDh = v_BTX.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        request = dict(device=x_BTD.device, dtype=q_BHTDh.dtype, head_dim=self.head_dim,
                       backward=torch.is_grad_enabled() and x_BTD.requires_grad)
        if ctx.decode is not None and getattr(ctx.cache, "kernel_writes", False):
            # RoPE, the cache write and attention in one decode_attention call (one kernel instead of ~four)
            k_pool, v_pool = ctx.cache.read(self.layer_idx)
            rope = {}
            if ctx.decode.cos_PDh is not None:  # the op reads each row's angles at its new slot (no angle kernels)
                rope = {"cos_PDh": ctx.decode.cos_PDh, "sin_PDh": ctx.decode.sin_PDh}
            elif ctx.cos_BTDh is not None:
                rope = {"cos_BDh": ctx.cos_BTDh[:, 0].expand(B, -1), "sin_BDh": ctx.sin_BTDh[:, 0].expand(B, -1)}
            if ctx.decode.unified_ws is not None and getattr(self.o_proj, "accepts_att", False):
                # no combine kernel: the attention leaves its output unnormalised in the cache's workspace and the
                # output projection divides it as it reads it
                parts = self._unified_op(q_BHTDh)(q_BHTDh[:, :, 0], k_pool, v_pool, ctx.decode.lens_B,
                                                  ws=ctx.decode.unified_ws, layer=self.layer_idx,
                                                  k_new=k_BKTDh[:, :, 0], v_new=v_BKTDh[:, :, 0], **rope)
                return linear_with(self.o_proj, None, residual=residual, att=parts).view(B, 1, -1)
            o_BHDh = self._decode_op(q_BHTDh)(q_BHTDh[:, :, 0], k_pool, v_pool, ctx.decode.lens_B,
                                              k_new=k_BKTDh[:, :, 0], v_new=v_BKTDh[:, :, 0], **rope,
                                              **ctx.decode.kwargs)
            return linear_with(self.o_proj, o_BHDh.reshape(B, 1, self.n_heads * self.head_dim), residual=residual)
        if ctx.cos_BTDh is not None:
            rope = resolve("rope", "auto", **request)
            q_BHTDh = rope(q_BHTDh, ctx.cos_BTDh, ctx.sin_BTDh)
            k_BKTDh = rope(k_BKTDh, ctx.cos_BTDh, ctx.sin_BTDh)
        if ctx.cache is not None:
            k_BKTDh, v_BKTDh = ctx.cache.append(self.layer_idx, k_BKTDh, v_BKTDh)  # now (B, KVH, S, Dh) or a pool
        if ctx.decode is not None:  # one token per row, no mask: read each row's slots up to its length
            o_BHDh = self._decode_op(q_BHTDh)(q_BHTDh[:, :, 0], k_BKTDh, v_BKTDh, ctx.decode.lens_B,
                                              **ctx.decode.kwargs)
            return linear_with(self.o_proj, o_BHDh.reshape(B, 1, self.n_heads * self.head_dim), residual=residual)
        if getattr(ctx.cache, "fixed_shape", False) and not torch.compiler.is_compiling():
            self._decode_op(q_BHTDh)  # resolved now (eager prefill): compiled decode steps find it (fullgraph)
            if getattr(ctx.cache, "unified_ws", None) is not None:
                self._unified_op(q_BHTDh)
        attend = resolve("attention", self.attn_impl, causal=ctx.causal, gqa=self.n_kv_heads != self.n_heads,
                         mask=ctx.mask_B1TS is not None, bias=ctx.bias_BHTS is not None, **request)
        o_BHTDh = attend(q_BHTDh, k_BKTDh, v_BKTDh, mask=ctx.mask_B1TS, causal=ctx.causal, bias=ctx.bias_BHTS)
        return linear_with(self.o_proj, o_BHTDh.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim),
                           residual=residual)

    def _decode_op(self, q: torch.Tensor) -> Callable[..., torch.Tensor]:
        return resolve("decode_attention", self.decode_impl or self.attn_impl, device=q.device,
                       dtype=q.dtype, head_dim=self.head_dim, gqa=self.n_kv_heads != self.n_heads)

    def _unified_op(self, q: torch.Tensor) -> Callable[..., Any]:
        return resolve("decode_attention_unified", self.decode_impl or self.attn_impl, device=q.device,
                       dtype=q.dtype, head_dim=self.head_dim)

    def fold_input_norm(self, weight: torch.Tensor, eps: float) -> None:
        """Fold the weight of the RMSNorm that feeds this layer into the q/k/v projections (in place, inference):
        forward then takes the un-normalised input and the projections normalise it (``tensor.folded``)."""
        fold_norm_weight(self.norm_readers(), weight)
        self.input_rms_eps = eps

    def norm_readers(self) -> list[nn.Module]:
        """The projections that read this layer's input norm: ``qkv_proj`` when fused, else q/k/v_proj."""
        names = ("qkv_proj",) if is_fused(self, "qkv_proj") else ("q_proj", "k_proj", "v_proj")
        return [getattr(self, n) for n in names]

    def fuse_projections(self) -> None:
        """One ``qkv_proj`` GEMM instead of q/k/v_proj (decode speed); outputs and state_dict keys unchanged.
        Projections that are no longer plain Linears (quantized, adapted) are left as they are."""
        if not is_fused(self, "qkv_proj") and all(type(getattr(self, n)) is nn.Linear
                                                   for n in ("q_proj", "k_proj", "v_proj")):
            fuse_linears(self, ("q_proj", "k_proj", "v_proj"), "qkv_proj")

    def extra_repr(self) -> str:
        return (f"layer_idx={self.layer_idx}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, attn_impl={self.attn_impl!r}")
