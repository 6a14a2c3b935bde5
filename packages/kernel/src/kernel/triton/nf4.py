"""QLoRA's 4-bit NormalFloat weight back to a dense matrix in one pass (the registry's ``nf4_dequantize``; the
definition in :func:`kernel.nf4.nf4_dequantize`): a program per ``BLOCK`` values reads their ``BLOCK / 2``
bytes, splits the nibbles, looks each up in the 16 NF4 levels and scales it by its block's absmax (decoded from
its 8-bit code, its group's scale and the offset under double quantization), and writes the compute dtype.
The eager torch reference takes ~10 passes over the weight for the same (unpack, gather, two block scalings).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel.nf4 import check_nf4
from tensor.nf4 import ABSMAX_BLOCKSIZE, BLOCKSIZE, NF4_CODE, dynamic_map

BLOCK = 2048  # values a program
_CODES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


@triton.jit
def _dequant(data_ptr, absmax_ptr, scale_ptr, offset_ptr, code_ptr, dyn_ptr, out_ptr, n, BLOCKSIZE: tl.constexpr,
             ABS_BLOCK: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    half = pid * (BLOCK // 2) + tl.arange(0, BLOCK // 2)  # the program's bytes
    byte = tl.load(data_ptr + half, mask=half < (n + 1) // 2, other=0).to(tl.int32)
    hi = tl.load(code_ptr + (byte >> 4))
    lo = tl.load(code_ptr + (byte & 15))
    values = tl.interleave(hi, lo)  # value 2i is byte i's high nibble, 2i + 1 its low one
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    blk = offs // BLOCKSIZE
    if DOUBLE:
        q = tl.load(absmax_ptr + blk, mask=keep, other=0).to(tl.int32)
        am = tl.load(dyn_ptr + q) * tl.load(scale_ptr + blk // ABS_BLOCK, mask=keep, other=0.0) + tl.load(offset_ptr)
    else:
        am = tl.load(absmax_ptr + blk, mask=keep, other=0.0)
    tl.store(out_ptr + offs, (values * am).to(out_ptr.dtype.element_ty), mask=keep)


def _codes(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _CODES:
        _CODES[device] = (torch.tensor(NF4_CODE, dtype=torch.float32, device=device),
                          torch.tensor(dynamic_map(), dtype=torch.float32, device=device))
    return _CODES[device]


def nf4_dequantize(data: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
                   absmax_offset: torch.Tensor | None, shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """:func:`kernel.nf4.nf4_dequantize` in one Triton kernel."""
    n = check_nf4(data, absmax, absmax_scale, absmax_offset, shape, blocksize)
    out = torch.empty(tuple(shape), dtype=dtype, device=data.device)
    code, dyn = _codes(data.device)
    double = absmax.dtype == torch.uint8
    scale = absmax_scale if double else absmax  # (unread placeholders without double quantization)
    offset = absmax_offset if double else absmax
    _dequant[(triton.cdiv(n, BLOCK),)](data.contiguous(), absmax.contiguous(), scale, offset, code, dyn, out, n,
                                       BLOCKSIZE=blocksize, ABS_BLOCK=ABSMAX_BLOCKSIZE, DOUBLE=double, BLOCK=BLOCK,
                                       num_warps=4)
    return out
