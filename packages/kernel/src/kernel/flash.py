"""Adapter for Tri Dao's flash-attn package (FlashAttention-2, Dao 2023, arXiv:2307.08691), when installed.

flash-attn takes (B, T, H, Dh) tensors, GQA natively, bottom-right aligned causal masking (flash-attn >= 2.1, the
same convention as ``kernel.reference``) and fp16/bf16 on sm80+. It takes no arbitrary mask or bias tensor, so the
registry declares those unsupported and falls back to SDPA for such requests. ``flash_attn`` is imported only here,
only when this implementation is chosen.
"""

from __future__ import annotations

import torch

from kernel.reference import check_attention_inputs
from specs.errors import PluginError


def attention(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """flash-attn forward (and backward through its autograd function); returns (B, H, T, Dh)."""
    from flash_attn import flash_attn_func

    check_attention_inputs(q_BHTDh, k_BKSDh, v_BKSDh)
    if mask is not None or bias is not None:
        raise PluginError("flash-attn takes no mask or bias tensor; resolve('attention', ...) with mask=True "
                                  "or bias=True to get an implementation that does")
    out_BTHDh = flash_attn_func(q_BHTDh.transpose(1, 2), k_BKSDh.transpose(1, 2), v_BKSDh.transpose(1, 2),
                                softmax_scale=scale, causal=causal)
    return out_BTHDh.transpose(1, 2)
