"""The ``nf4_dequantize`` op's pure-torch reference: a 4-bit NormalFloat weight (QLoRA's, in bitsandbytes'
layout; ``tensor.nf4`` defines it) back to a dense matrix in a compute dtype. lmstack-compress's ``NF4Linear``
calls it twice a step (forward, and backward for the input's gradient); the Triton implementation
(``kernel.triton.nf4``) does it in one pass over the bytes.

Arguments: ``data`` (ceil(n/2),) uint8, two indices a byte, the first in the high nibble; ``absmax`` (blocks,)
fp32, or uint8 codes of the signed dynamic map under double quantization, with ``absmax_scale`` (ceil(blocks/256),)
fp32 and ``absmax_offset`` (1,) fp32; ``shape`` the weight's (n values in all); ``dtype`` the result's;
``blocksize`` the values sharing an absmax (64).
"""

from __future__ import annotations

import math

import torch

from specs.errors import ShapeError
from tensor.nf4 import ABSMAX_BLOCKSIZE, BLOCKSIZE, dequantize_nf4


def check_nf4(data: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
              absmax_offset: torch.Tensor | None, shape: tuple[int, ...], blocksize: int) -> int:
    """Validate :func:`nf4_dequantize`'s arguments; returns the number of values."""
    n = math.prod(shape)
    if data.dtype != torch.uint8 or data.numel() != (n + 1) // 2:
        raise ShapeError(f"nf4_dequantize: data must be {(n + 1) // 2} uint8 bytes for shape {tuple(shape)}, got "
                         f"{data.numel()} {data.dtype}")
    blocks = absmax.numel()
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ShapeError(f"nf4_dequantize: blocksize must be an even int >= 2, got {blocksize!r}")
    if -(-n // blocksize) != blocks:
        raise ShapeError(f"nf4_dequantize: {n} values in blocks of {blocksize} need {-(-n // blocksize)} absmaxes, "
                         f"got {blocks}")
    double = absmax.dtype == torch.uint8
    if double and (absmax_scale is None or absmax_offset is None
                   or absmax_scale.numel() != -(-blocks // ABSMAX_BLOCKSIZE) or absmax_offset.numel() != 1):
        raise ShapeError(f"nf4_dequantize: uint8 absmaxes (double quantization) need absmax_scale "
                         f"({-(-blocks // ABSMAX_BLOCKSIZE)},) and absmax_offset (1,)")
    if not double and absmax.dtype != torch.float32:
        raise ShapeError(f"nf4_dequantize: absmax must be float32 (or uint8 codes), got {absmax.dtype}")
    return n


def nf4_dequantize(data: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
                   absmax_offset: torch.Tensor | None, shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """The dense weight (``shape``, ``dtype``), computed in fp32 as bitsandbytes does."""
    check_nf4(data, absmax, absmax_scale, absmax_offset, shape, blocksize)
    q = {"nf4_data": data, "nf4_absmax": absmax}
    if absmax_scale is not None:
        q.update(nf4_absmax_scale=absmax_scale, nf4_absmax_offset=absmax_offset)
    return dequantize_nf4(q, dtype, shape=tuple(shape), blocksize=blocksize)
