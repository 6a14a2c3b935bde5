"""Skinny matmul for decode in Triton: ``y = x @ w.T (* scale) (+ bias)`` for a few rows of x, bf16 or int8 weights.

A decode step multiplies 1-16 activation rows by every weight matrix once: the time is the weight bytes over the
bandwidth the kernel sustains, and a plain GEMV loop keeps too few bytes in flight to approach it (the int8 GEMV in
``kernel.triton.int8_linear`` sustained about 16% of the H200's copy bandwidth; inductor's generated
matrix-vector reductions 25-63%, cuBLAS 35-85% by shape; docs/benchmarks.md). Here each program computes a
(16, BLOCK_N) output tile with ``tl.dot`` over its share of K, so Triton's software pipeliner streams the weight
tiles through shared memory ``NUM_STAGES`` deep (asynchronous copies, many tiles in flight per SM), and the K
dimension is split over ``SPLIT_K`` programs when N alone gives too few programs to fill the GPU. Partial sums go
to an fp32 buffer summed afterwards (deterministic, unlike atomics). Int8 weights are converted in registers after
the load, so they cross the memory bus as one byte each; the per-channel scale is applied to the fp32 result.

Rows past 16 are left to torch's matmul (compute-bound there). Tile sizes come from :func:`tiles` (enough
programs for every SM, ~32 KB in flight per program); they have not been tuned on a GPU yet, which is why the
registry ranks these implementations below the measured ones (opt in with ``--prefer``). Semantics:
:func:`kernel.reference.linear` and :func:`kernel.reference.int8_linear`.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernel.reference import int8_linear as _int8_reference
from kernel.reference import linear as _reference

MAX_ROWS = 16


@triton.jit
def _skinny(x_ptr, w_ptr, p_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_wn, stride_ps, stride_pm,
            UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            NUM_STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m = tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_hi
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)  # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0)  # (BLOCK_N, BLOCK_K), int8 or float
        if UPCAST:  # fp32 activations, or the interpreter's bf16: exact fp32 products
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    tl.store(p_ptr + split * stride_ps + m[:, None] * stride_pm + n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@functools.lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tiles(N: int, K: int, weight_bytes: int, num_sms: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES): a 32 x 256-byte weight tile per stage, four stages, and K split
    until there are about two programs per SM (each split keeping at least two K tiles)."""
    block_n, block_k = 32, 256 // weight_bytes
    programs_n = triton.cdiv(N, block_n)
    split = 1
    while programs_n * split < 2 * num_sms and K // (2 * split * block_k) >= 2:
        split *= 2
    return block_n, block_k, split, 4


def _skinny_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 (M, N) = x (M, K) @ w (N, K).T for M <= MAX_ROWS."""
    M, K = x.shape
    N = w.shape[0]
    sms = _num_sms(x.device.index or 0) if x.is_cuda else 8
    block_n, block_k, split, stages = tiles(N, K, w.element_size(), sms)
    k_per_split = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    split = triton.cdiv(K, k_per_split)
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
    upcast = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    _skinny[(triton.cdiv(N, block_n), split)](x, w, part, M, N, K, k_per_split, x.stride(0), w.stride(0),
                                              part.stride(0), part.stride(1), UPCAST=upcast, BLOCK_M=16,
                                              BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=stages)
    return part[0] if split == 1 else part.sum(0)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for (..., K) activations and a float (N, K) weight; (..., N) in x's dtype."""
    x2 = _rows(x)
    if x2.shape[0] > MAX_ROWS or weight.dtype != x.dtype:
        return _reference(x, weight, bias)
    y = _skinny_mm(x2, weight if weight.stride(-1) == 1 else weight.contiguous())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) activations, (N, K) int8 weights, (N,) scales -> (..., N) in x's dtype."""
    x2 = _rows(x)
    if x2.shape[0] > MAX_ROWS:
        return _int8_reference(x, weight_int8, scale, bias)
    y = _skinny_mm(x2, weight_int8.contiguous()) * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight_int8.shape[0])
