"""The implementations lmstack ships, with what each supports. Targets are imported lazily on first use."""

from __future__ import annotations

import torch

from kernel.implementation import OPS, Implementation

LOW_PRECISION = (torch.float16, torch.bfloat16)


def reference_implementations() -> list[Implementation]:
    """The pure-torch reference of every op: any device, any dtype, every feature; the last fallback."""
    return [Implementation(op=op, name="reference", target=f"kernel.reference:{op}", fallback=None,
                           description="pure torch, float32 math") for op in OPS]


def builtin_implementations() -> list[Implementation]:
    return [
        *reference_implementations(),
        Implementation(op="attention", name="sdpa", target="kernel.sdpa:attention", priority=10,
                       description="torch scaled_dot_product_attention (flash / efficient / cuDNN / math back ends)"),
        Implementation(op="attention", name="flash", target="kernel.flash:attention", priority=30,
                       devices=("cuda",), dtypes=LOW_PRECISION, max_head_dim=256, head_dim_multiple=8,
                       mask=False, bias=False, window=False, min_capability=(8, 0), requires=("flash_attn",),
                       fallback="sdpa", description="flash-attn 2 (Dao 2023)"),
    ]
