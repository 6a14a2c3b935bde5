"""LayerNorm whose backward keeps its normalised input in the matmul dtype: the ``layernorm`` op's ``lowp_saved``.

A compiled GPT-2 step's LayerNorms (``F.layer_norm``, fp32 under autocast) save their normalised input in fp32 for
the backward: at the 124M shape and 16 rows, 50 MB written in each forward and read in each backward, 25 times a
step (docs/benchmarks.md, "where the rest of the step goes"). Here the forward computes in fp32 (fp64 for fp64
inputs) as the reference does and returns the same values in the same dtype, but saves ``xhat`` in the autocast
dtype (bf16: half the bytes) with the fp32 ``rstd`` of each row; the backward is LayerNorm's own in fp32 from those (Ba et al. 2016):

    dxhat = dy * w,  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
    dw = sum(dy * xhat),  db = sum(dy)

Outside autocast the saved ``xhat`` keeps x's dtype, so an fp32 model gets the reference's gradients. Under
autocast the gradients carry the saved ``xhat``'s rounding (a relative 2^-9 in bf16), below the bf16 matmuls'
own. Written in torch ops, so torch.compile traces and fuses it like the reference.
"""

from __future__ import annotations

import torch


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                out_dtype: torch.dtype, save_dtype: torch.dtype) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        xf = x.to(acc)
        xc = xf - xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
        xhat = xc * rstd
        y = xhat
        if weight is not None:
            y = y * weight.to(acc)
        if bias is not None:
            y = y + bias.to(acc)
        ctx.save_for_backward(xhat.to(save_dtype), rstd, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.x_dtype = x.dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        acc = rstd.dtype
        xhat = xhat.to(acc)
        dyf = dy.to(acc)
        g = dyf * weight.to(acc) if weight is not None else dyf
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))).to(ctx.x_dtype)
        lead = tuple(range(dy.dim() - 1))
        dw = (dyf * xhat).sum(lead).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = dyf.sum(lead).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def layernorm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim, as :func:`kernel.reference.layernorm` computes it (fp32 out under autocast, as
    ``F.layer_norm``), its normalised input saved for the backward in the autocast dtype. Without gradients it is
    the reference."""
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not grads:
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    dev = x.device.type
    autocast = torch.is_autocast_enabled(dev)
    out_dtype, save_dtype = dtypes(dev, x.dtype, torch.get_autocast_dtype(dev) if autocast else None)
    return _LayerNorm.apply(x, weight, bias, eps, out_dtype, save_dtype)


def dtypes(device_type: str, x_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> tuple[torch.dtype, ...]:
    """(output dtype, saved xhat's dtype) for x of ``x_dtype`` on ``device_type`` with autocast off (None) or on.
    The output is F.layer_norm's: CUDA's autocast lists layer_norm among its fp32 ops, CPU's does not."""
    if autocast_dtype is None:
        return x_dtype, x_dtype
    return (torch.float32 if device_type == "cuda" else x_dtype), autocast_dtype
