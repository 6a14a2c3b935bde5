"""GPT-2's MLP, ``down(gelu_tanh(up(x)))``, with the GELU in the matmuls' epilogues (cuBLASLt) for training.

Forward: the up-projection's matmul adds the bias, writes the activation and keeps the pre-activation for the
backward (:func:`kernel.cublaslt.gelu_linear`); the down-projection is a plain matmul. Backward: the
down-projection's data-gradient matmul applies the GELU derivative in its epilogue
(:func:`kernel.cublaslt.linear_dgelu`); the weight gradients, the input gradient and the bias gradients are plain
matmuls and sums. Against separate GELU kernels this skips a read and a write of the (N, F) activations each way:
the cuBLASLt epilogues Transformer Engine's ``LayerNormMLP`` uses. On an H200 a GPT-2 124M training step under
torch.compile ran 2.2% faster at 16 rows and 1.9% at 32 (docs/benchmarks.md), so ``auto`` picks it under compile
on CUDA.

The epilogue matmuls are torch custom ops (``lmstack::gelu_linear``, ``lmstack::linear_dgelu``, and
``lmstack::wgrad_bgrad`` for the by-name ``cublaslt_bgrad`` form), opaque to torch.compile like any cuBLAS call,
with a pure-torch path for other devices and dtypes, so the same autograd function runs (and is tested) on a CPU.
Under autocast the operands are cast to the autocast dtype first, as ``F.linear`` would cast them.

Shape legend: N rows (all leading dims flattened), D model width, F hidden width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kernel import cublaslt
from kernel.reference import matmul_dtype
from specs.errors import ShapeError


@torch.library.custom_op("lmstack::gelu_linear", mutates_args=())
def gelu_linear(x_ND: torch.Tensor, weight_FD: torch.Tensor,
                bias_F: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu_tanh(h), h)`` with ``h = x @ weight.T + bias``: one cuBLASLt matmul on CUDA, torch elsewhere."""
    if cublaslt.supports(x_ND, weight_FD) and (bias_F is None or (bias_F.dtype == x_ND.dtype and bias_F.dim() == 1)):
        return cublaslt.gelu_linear(x_ND, weight_FD, bias_F)
    h = F.linear(x_ND, weight_FD, bias_F)
    return F.gelu(h, approximate="tanh"), h


@gelu_linear.register_fake
def _(x_ND: torch.Tensor, weight_FD: torch.Tensor, bias_F: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x_ND.shape[0], weight_FD.shape[0])
    return x_ND.new_empty(shape), x_ND.new_empty(shape)


@torch.library.custom_op("lmstack::linear_dgelu", mutates_args=())
def linear_dgelu(dy_ND: torch.Tensor, weight_DF: torch.Tensor, pre_NF: torch.Tensor) -> torch.Tensor:
    """``(dy @ weight) * gelu_tanh'(pre)``: one cuBLASLt matmul on CUDA, torch elsewhere."""
    if cublaslt.supports(dy_ND, weight_DF) and pre_NF.dtype == dy_ND.dtype and pre_NF.is_contiguous():
        return cublaslt.linear_dgelu(dy_ND, weight_DF, pre_NF)
    return torch.ops.aten.gelu_backward(dy_ND @ weight_DF, pre_NF, approximate="tanh")


@linear_dgelu.register_fake
def _(dy_ND: torch.Tensor, weight_DF: torch.Tensor, pre_NF: torch.Tensor) -> torch.Tensor:
    return pre_NF.new_empty(pre_NF.shape)


@torch.library.custom_op("lmstack::wgrad_bgrad", mutates_args=())
def wgrad_bgrad(x_NK: torch.Tensor, dy_NM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear's ``(dy.T @ x, dy.sum(0))``: one cuBLASLt matmul (BGRADB) on CUDA, torch elsewhere."""
    try:
        return cublaslt.wgrad_bgrad(x_NK, dy_NM)
    except ShapeError:  # operands cuBLASLt cannot take (a CPU, fp32, odd widths): torch
        return dy_NM.t() @ x_NK, dy_NM.sum(0)


@wgrad_bgrad.register_fake
def _(x_NK: torch.Tensor, dy_NM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x_NK.new_empty((dy_NM.shape[1], x_NK.shape[1])), x_NK.new_empty(dy_NM.shape[1:])


class _GeluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_ND: torch.Tensor, up_w: torch.Tensor, up_b: torch.Tensor | None, down_w: torch.Tensor,
                down_b: torch.Tensor | None, bias_grads_in_wgrad: bool = False) -> torch.Tensor:
        act_NF, pre_NF = torch.ops.lmstack.gelu_linear(x_ND, up_w, up_b)
        ctx.save_for_backward(x_ND, up_w, down_w, act_NF, pre_NF)
        ctx.has_bias = (up_b is not None, down_b is not None)
        ctx.bias_grads_in_wgrad = bias_grads_in_wgrad
        return F.linear(act_NF, down_w, down_b)

    @staticmethod
    def backward(ctx: Any, dy_ND: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_ND, up_w, down_w, act_NF, pre_NF = ctx.saved_tensors
        need_x, need_uw, need_ub, need_dw, need_db = ctx.needs_input_grad[:5]
        dy_ND = dy_ND.contiguous()
        d_down_w, d_down_b = _wgrad(act_NF, dy_ND, need_dw, need_db and ctx.has_bias[1], ctx.bias_grads_in_wgrad)
        dx = d_up_w = d_up_b = None
        if need_x or need_uw or need_ub:
            dh_NF = torch.ops.lmstack.linear_dgelu(dy_ND, down_w, pre_NF)
            dx = dh_NF @ up_w if need_x else None
            d_up_w, d_up_b = _wgrad(x_ND, dh_NF, need_uw, need_ub and ctx.has_bias[0], ctx.bias_grads_in_wgrad)
        return dx, d_up_w, d_up_b, d_down_w, d_down_b, None


def _wgrad(x_NK: torch.Tensor, dy_NM: torch.Tensor, need_w: bool, need_b: bool,
           in_wgrad: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A Linear's weight and bias gradients: both from one BGRADB matmul (``in_wgrad``, when both are needed), or a
    matmul and a sum (under torch.compile, inductor's reduction)."""
    if in_wgrad and need_w and need_b:
        return torch.ops.lmstack.wgrad_bgrad(x_NK, dy_NM)
    return (dy_NM.t() @ x_NK if need_w else None), (dy_NM.sum(0) if need_b else None)


def gelu_mlp(x: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor | None, down_weight: torch.Tensor,
             down_bias: torch.Tensor | None, *, bias_grads_in_wgrad: bool = False) -> torch.Tensor:
    """``F.linear(gelu_tanh(F.linear(x, up_weight, up_bias)), down_weight, down_bias)`` over the last dim of ``x``
    (any leading shape), differentiable in every argument; (..., D) -> (..., D_out). Without gradients to compute
    (inference) it is that torch composition: the epilogue's pre-activation output would be written for nothing.
    ``bias_grads_in_wgrad``: each projection's bias gradient from its weight-gradient matmul's epilogue (BGRADB;
    the ``cublaslt_bgrad`` implementation), not a separate sum."""
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                            for t in (x, up_weight, up_bias, down_weight, down_bias))):
        return F.linear(F.gelu(F.linear(x, up_weight, up_bias), approximate="tanh"), down_weight, down_bias)
    dev, dtype = x.device.type, matmul_dtype(x)
    args = [None if t is None else t.to(dtype) for t in (x, up_weight, up_bias, down_weight, down_bias)]
    args[0] = args[0].reshape(-1, x.shape[-1]).contiguous()
    with torch.autocast(dev, enabled=False):
        y = _GeluMLP.apply(*args, bias_grads_in_wgrad)
    return y.view(*x.shape[:-1], down_weight.shape[0])


def gelu_mlp_bgrad(x: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor | None, down_weight: torch.Tensor,
                   down_bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`gelu_mlp` with ``bias_grads_in_wgrad=True`` (the registry's ``cublaslt_bgrad``)."""
    return gelu_mlp(x, up_weight, up_bias, down_weight, down_bias, bias_grads_in_wgrad=True)
