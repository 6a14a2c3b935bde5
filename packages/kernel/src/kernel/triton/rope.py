"""Fused rotary embedding (RoPE, Su et al. 2021, arXiv:2104.09864) in Triton, rotate-half layout.

Equals ``tensor.rope.apply_rope``: with x = [x1, x2] split at Dh/2,
``out = [x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2]``. The backward is the inverse rotation, the same kernel
with the sign of the sine flipped. One program rotates all heads of one (batch, position); math in fp32.
``cos``/``sin`` (B or 1, T, Dh) are read through their strides, so a broadcast batch costs nothing.

Shape legend: B batch, H heads, T positions, Dh head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from specs.tensor_spec import TensorSpec

_X = TensorSpec("B", "H", "T", "Dh")
_CS = TensorSpec("B", "T", "Dh")


@triton.jit
def _rope(x_ptr, cos_ptr, sin_ptr, out_ptr, H, T, HALF, sxb, sxh, sxt, scb, sct, SIGN: tl.constexpr,
          BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // T).to(tl.int64)
    t = (pid % T).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, BLOCK_H)
    dok = d < HALF
    cs = cos_ptr + b * scb + t * sct
    sn = sin_ptr + b * scb + t * sct
    c1 = tl.load(cs + d, mask=dok, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cs + HALF + d, mask=dok, other=0.0).to(tl.float32)[None, :]
    s1 = SIGN * tl.load(sn + d, mask=dok, other=0.0).to(tl.float32)[None, :]
    s2 = SIGN * tl.load(sn + HALF + d, mask=dok, other=0.0).to(tl.float32)[None, :]
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + h
        ok = (hh < H)[:, None] & dok[None, :]
        offs = b * sxb + hh[:, None].to(tl.int64) * sxh + t * sxt + d[None, :]
        x1 = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + offs + HALF, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(out_ptr + offs + HALF, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=ok)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    B, H, T, Dh = x.shape
    x = x.contiguous()
    cos = cos.expand(B, T, Dh)
    sin = sin.expand(B, T, Dh)
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x)
    half = Dh // 2
    _rope[(B * T,)](x, cos, sin, out, H, T, half, x.stride(0), x.stride(1), x.stride(2), cos.stride(0),
                    cos.stride(1), SIGN=sign, BLOCK_H=min(16, triton.next_power_of_2(H)),
                    BLOCK_D=triton.next_power_of_2(half))
    return out


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, -1.0), None, None  # the transpose of a rotation is the inverse rotation


def rope(x_BHTDh: torch.Tensor, cos_BTDh: torch.Tensor, sin_BTDh: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, Dh) by the angles of cos/sin (B or 1, T, Dh); differentiable in x (cos/sin are tables)."""
    env = _X.check(x_BHTDh, "x_BHTDh")
    _CS.check(cos_BTDh, "cos_BTDh", T=env["T"], Dh=env["Dh"])
    _CS.check(sin_BTDh, "sin_BTDh", T=env["T"], Dh=env["Dh"])
    return _Rope.apply(x_BHTDh, cos_BTDh, sin_BTDh)
