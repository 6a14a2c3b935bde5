"""Many LoRA adapters in one batch, each row its own (Punica's BGMV, Chen et al. 2023, arXiv:2310.18547): the
registry's ``lora`` op (semantics in :func:`kernel.lora.lora`) as two Triton kernels.

- ``_shrink``, a program per (token, part, block of ranks): ``xa[n, p] = scale[s] * A[s, p] @ x[n]`` (R values),
  reading only the row's own adapter (a row without one reads nothing and writes zeros). A few ranks a program
  keep its (ranks, BLOCK_K) tile in registers: a whole rank-16 tile of 2048 columns spilled and took 13 us a call
  in a 1.1B decode step.
- ``_expand``, a program per (token, part, block of the part's output columns): ``y[n, cols] += xa[n, p] @
  B[s, p][:, cols]``, in place.

Two launches whatever the number of adapters, and bytes for the rows' own adapters only; but every row re-reads
its adapter's B from the L2. Timed on an H200 (``benchmarks/bench_lora.py``, docs/benchmarks.md) against the dense
form with the masks given (three kernels: two matmuls over every slot and the mask), the kernels win at one row
(5.5-6 us a call against ~8.3 for q/k/v, o and gate/up) and lose at 64 (8-16.5 against 8.5-9.5). So past
``KERNEL_ROWS`` tokens the op runs the dense form in the input's dtype.

Shape legend: N tokens (B rows of T), I in, O out, S slots, P parts, R rank.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel.lora import check_lora, lora_dense

KERNEL_ROWS = 16  # more tokens than this: the dense form
MAX_PARTS = 4  # packed projections the kernels take (q/k/v: 3); more: the dense form
# (BLOCK_K, warps, ranks a program) of the shrink, (BLOCK_O, warps) of the expand
SHRINK = (1024, 4, 2)
EXPAND = (64, 2)


@triton.jit
def _program_row(rows_ptr, T, S):
    """This program's token n, part p, its row's slot, whether it has one, and a slot safe to index with (0)."""
    n = tl.program_id(0).to(tl.int64)
    slot = tl.load(rows_ptr + n // T)
    used = slot < S
    return n, tl.program_id(1), slot, used, tl.where(used, slot, 0)


@triton.jit
def _shrink(x_ptr, a_ptr, rows_ptr, scales_ptr, xa_ptr, T, I, S, P, R,
            BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    n, p, slot, used, s = _program_row(rows_ptr, T, S)
    r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = (r < R) & ((r * 0 + slot) < S)  # (a block-wide test: the interpreter refuses a scalar in a mask)
    a_rows = a_ptr + ((s * P + p) * R + r).to(tl.int64)[:, None] * I
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < I
        xv = tl.load(x_ptr + n * I + k, mask=k_ok, other=0.0).to(tl.float32)
        av = tl.load(a_rows + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(av * xv[None, :], axis=1)
    scale = tl.where(used, tl.load(scales_ptr + s), 0.0)
    tl.store(xa_ptr + (n * P + p) * R + r, acc * scale, mask=r < R)


@triton.jit
def _expand(y_ptr, xa_ptr, b_ptr, rows_ptr, B1, B2, B3, B4, T, O, S, P, R,
            BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr):
    n, p, slot, used, s = _program_row(rows_ptr, T, S)
    start = tl.where(p == 0, 0, tl.where(p == 1, B1, tl.where(p == 2, B2, B3)))  # the part's columns
    stop = tl.where(p == 0, B1, tl.where(p == 1, B2, tl.where(p == 2, B3, B4)))
    o = start + tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = (o < stop) & ((o * 0 + slot) < S)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < R
    xa = tl.load(xa_ptr + (n * P + p) * R + r, mask=r_ok, other=0.0)
    b_rows = b_ptr + ((s * P + p) * R + r).to(tl.int64)[:, None] * O
    bv = tl.load(b_rows + o[None, :], mask=r_ok[:, None] & o_ok[None, :], other=0.0).to(tl.float32)
    delta = tl.sum(xa[:, None] * bv, axis=0)
    y_at = y_ptr + n * O + o
    yv = tl.load(y_at, mask=o_ok, other=0.0).to(tl.float32)
    tl.store(y_at, (yv + delta).to(y_ptr.dtype.element_ty), mask=o_ok)


def lora(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, rows: torch.Tensor,
         scales: torch.Tensor, bounds: tuple[int, ...], mask: torch.Tensor | None = None, *,
         shrink: tuple[int, int, int] = SHRINK, expand: tuple[int, int] = EXPAND,
         kernel_rows: int = KERNEL_ROWS) -> torch.Tensor:
    """:func:`kernel.lora.lora` on the GPU (in place; returns y). ``shrink``: (BLOCK_K, warps, ranks a
    program); ``expand``: (BLOCK_O, warps); ``kernel_rows``: the most tokens the kernels take (more: the dense form)."""
    S, P, R, T = check_lora(y, x, lora_a, lora_b, rows, scales, bounds)
    tokens, O = y.shape
    if tokens > kernel_rows or P > MAX_PARTS:
        return lora_dense(y, x, lora_a, lora_b, rows, scales, bounds, dtype=x.dtype, mask=mask)
    x, lora_a, lora_b = x.contiguous(), lora_a.contiguous(), lora_b.contiguous()
    scales = scales.to(device=x.device, dtype=torch.float32)
    block_r = max(triton.next_power_of_2(R), 16)
    xa = torch.empty(tokens, P, R, dtype=torch.float32, device=x.device)
    block_k = min(triton.next_power_of_2(x.shape[1]), shrink[0])
    ranks = min(shrink[2], block_r)
    _shrink[(tokens, P, triton.cdiv(R, ranks))](x, lora_a, rows, scales, xa, T, x.shape[1], S, P, R, BLOCK_R=ranks,
                                                BLOCK_K=block_k, num_warps=shrink[1])
    widest = max(b - a for a, b in zip(bounds, bounds[1:]))
    cuts = [*bounds[1:], *[O] * (MAX_PARTS - P)]  # the parts' ends, as scalars (nothing to copy in a CUDA graph)
    _expand[(tokens, P, triton.cdiv(widest, expand[0]))](y, xa, lora_b, rows, *cuts, T, O, S, P, R, BLOCK_R=block_r,
                                                    BLOCK_O=expand[0], num_warps=expand[1])
    return y
