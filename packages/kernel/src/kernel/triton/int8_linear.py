"""Weight-only int8 linear for decode in Triton: ``y = (x @ w_int8.T) * scale + b`` reading the int8 weights once.

Batch-1 decode is bound by weight bytes, so int8 weights halve its floor only if nothing converts them to a bf16
copy first: each program dequantises a (BLOCK_N, BLOCK_K) tile in registers and accumulates in fp32 (a GEMV; the
rows of x are few). Many output blocks (small BLOCK_N) keep every SM busy at decode shapes (N of 2-6k). Past
``MAX_ROWS`` rows the product is compute-bound and goes to torch's matmul on a dequantised weight instead.
Reference semantics: :func:`kernel.reference.int8_linear`. gpt-fast's int8 path and Triton's matmul tutorial.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel.reference import int8_linear as _reference

MAX_ROWS = 16
BLOCK_N = 16
BLOCK_K = 256


@triton.jit
def _gemv(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n_offs < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offs = k0 + tl.arange(0, BLOCK_K)
        k_ok = k_offs < K
        x = tl.load(x_ptr + m * stride_xm + k_offs, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + n_offs[:, None].to(tl.int64) * stride_wn + k_offs[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    s = tl.load(s_ptr + n_offs, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + n_offs, (acc * s).to(y_ptr.dtype.element_ty), mask=n_ok)


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None, *, rms_eps: float | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) activations, (N, K) int8 weights, (N,) scales -> (..., N) in x's dtype; ``rms_eps`` and ``residual``
    as :func:`kernel.reference.int8_linear`, done by torch around this kernel (the skinny matmul fuses them)."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    M, N = x2.shape[0], weight_int8.shape[0]
    if M > MAX_ROWS or rms_eps is not None or residual is not None:
        return _reference(x, weight_int8, scale, bias, rms_eps=rms_eps, residual=residual)
    x2 = x2.contiguous()
    w = weight_int8.contiguous()
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _gemv[(triton.cdiv(N, BLOCK_N), M)](x2, w, scale.contiguous(), y, N, K, x2.stride(0), w.stride(0), y.stride(0),
                                        BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], N)
