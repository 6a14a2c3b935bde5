"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

PyTorch picks among its flash, memory-efficient, cuDNN and math back ends per call; this adapter keeps the inputs
in the shapes that let it use the fast ones:
  - no mask and no bias: ``is_causal`` (when T == S) and native GQA (``enable_gqa``), the flash back end's path;
  - bottom-right causal with T != S (decode), boolean masks or a bias: an explicit mask, KV heads repeated
    (the memory-efficient back end takes masks but not GQA);
  - rows that may attend to nothing get a dummy all-True row and a zero output, as in ``kernel.reference``.
Semantics are those documented in :mod:`kernel.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel.reference import (
    allowed_mask,
    check_attention_inputs,
    decode_keys,
    decode_new_token,
    decode_rope,
    repeat_kv,
)


def attention(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA attention; returns (B, H, T, Dh) in q's dtype."""
    _, H, KVH, T, S, _ = check_attention_inputs(q_BHTDh, k_BKSDh, v_BKSDh)
    if mask is None and bias is None and (not causal or T == S):
        return F.scaled_dot_product_attention(q_BHTDh, k_BKSDh, v_BKSDh, is_causal=causal, scale=scale,
                                              enable_gqa=H != KVH)
    k = repeat_kv(k_BKSDh, H // KVH)
    v = repeat_kv(v_BKSDh, H // KVH)
    allowed = allowed_mask(mask, causal, T, S, q_BHTDh.device)
    empty = None
    if allowed is not None:
        empty = ~allowed.any(dim=-1, keepdim=True)
        allowed = allowed | empty
    if bias is None:
        attn_mask = allowed
    else:
        attn_mask = bias.to(q_BHTDh.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q_BHTDh, k, v, attn_mask=attn_mask, scale=scale)
    return out if empty is None else out.masked_fill(empty, 0.0)


def decode_attention(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                     block_table: torch.Tensor | None = None, block_size: int | None = None,
                     scale: float | None = None, k_new: torch.Tensor | None = None,
                     v_new: torch.Tensor | None = None, cos_BDh: torch.Tensor | None = None,
                     sin_BDh: torch.Tensor | None = None, split_counters: torch.Tensor | None = None,
                     cos_PDh: torch.Tensor | None = None, sin_PDh: torch.Tensor | None = None) -> torch.Tensor:
    """The decode op through SDPA: keys gathered (paged) and masked by the row lengths, KV heads repeated; what the
    model ran before the Triton decode kernel, kept as the baseline and the fast path where Triton is absent. The
    new-token arguments (rope, cache write) are :func:`kernel.reference.decode_new_token`."""
    cos_BDh, sin_BDh = decode_rope(q_BHDh, k, lens_B, block_table, block_size, cos_BDh, sin_BDh, cos_PDh, sin_PDh)
    if k_new is not None or cos_BDh is not None:
        q_BHDh = decode_new_token(q_BHDh, k, v, lens_B, block_table, block_size, k_new, v_new, cos_BDh, sin_BDh)
    k, v, valid_B11S = decode_keys(q_BHDh, k, v, lens_B, block_table, block_size)
    return attention(q_BHDh[:, :, None], k, v, mask=valid_B11S, scale=scale)[:, :, 0]
