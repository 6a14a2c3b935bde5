"""RMSNorm forward and backward in Triton (Zhang & Sennrich 2019, arXiv:1910.07467).

Numerics follow ``kernel.reference.rmsnorm`` (Hugging Face LlamaRMSNorm): normalise in fp32, round to the input
dtype, then multiply by the weight. One program normalises one row; the backward recomputes the normalised row
from the saved 1/rms and writes per-program partial weight gradients that torch sums (the layout of the Triton
tutorial's fused layer norm and of Liger Kernel's RMSNorm).

Shape legend: N rows (all leading dims flattened), D the normalised dim.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, D, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    y = (x * rstd).to(x_ptr.dtype.element_ty)  # round to the input dtype before the weight, as HF does
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        y = y.to(tl.float32) * w
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _bwd(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, N, D, ROWS: tl.constexpr, HAS_W: tl.constexpr,
         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    else:
        w = tl.where(ok, 1.0, 0.0)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = pid.to(tl.int64) * ROWS + i
        if row < N:
            x = tl.load(x_ptr + row * D + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * D + cols, mask=ok, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            n = x * rstd
            g = dy * w
            # d/dx of x * rstd(x): rstd * (g - n * mean(g * n))
            dx = rstd * (g - n * (tl.sum(g * n, axis=0) / D))
            tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=ok)
            dw += dy * n
    tl.store(dw_ptr + pid * D + cols, dw, mask=ok)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        shape = x.shape
        x_ND = x.reshape(-1, shape[-1]).contiguous()
        N, D = x_ND.shape
        out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty((N, D), dtype=out_dtype, device=x.device)
        rstd = torch.empty(N, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(D)
        w = weight.contiguous() if weight is not None else x_ND
        _fwd[(N,)](x_ND, w, y, rstd, D, eps, HAS_W=weight is not None, BLOCK=block)
        ctx.save_for_backward(x_ND, weight if weight is not None else x_ND.new_empty(0), rstd)
        ctx.has_w, ctx.shape = weight is not None, shape
        return y.view(shape)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_ND, weight, rstd = ctx.saved_tensors
        N, D = x_ND.shape
        dy_ND = dy.reshape(N, D).contiguous()
        dx = torch.empty_like(x_ND)
        rows = 8 if N >= 1024 else 1
        n_prog = triton.cdiv(N, rows)
        dw_partial = torch.empty((n_prog, D), dtype=torch.float32, device=x_ND.device)
        _bwd[(n_prog,)](dy_ND, x_ND, weight if ctx.has_w else x_ND, rstd, dx, dw_partial, N, D, ROWS=rows,
                        HAS_W=ctx.has_w, BLOCK=triton.next_power_of_2(D))
        dw = dw_partial.sum(0).to(weight.dtype) if ctx.has_w else None
        return dx.view(ctx.shape), dw, None


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim (any leading shape); differentiable in x and weight."""
    return _RMSNorm.apply(x, weight, eps)
