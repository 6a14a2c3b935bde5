"""lmstack tensor: stateless numerics (RoPE and its scalings, attention masks, ALiBi, init, residual helpers).

Torch and specs only. Import the submodules (``from tensor.rope import apply_rope``); the names below are
re-exported for convenience.
"""

from tensor.alibi import alibi_bias, alibi_slopes
from tensor.init import init_weights, param_role, param_std
from tensor.masks import (
    attention_mask,
    causal_mask,
    document_mask,
    empty_rows,
    padding_mask,
    positions_from_padding,
    sliding_window_mask,
)
from tensor.residual import post_norm_residual, pre_norm_residual, residual, residual_add
from tensor.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate_half

__version__ = "0.5.0"

__all__ = [
    "alibi_bias", "alibi_slopes", "apply_rope", "attention_mask", "causal_mask", "document_mask", "empty_rows",
    "init_weights", "padding_mask", "param_role", "param_std", "positions_from_padding", "post_norm_residual",
    "pre_norm_residual", "residual", "residual_add", "rope_cos_sin", "rope_inv_freq", "rotate_half",
    "sliding_window_mask",
]
