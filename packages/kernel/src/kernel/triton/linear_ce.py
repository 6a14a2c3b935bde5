"""Fused linear + cross-entropy in Triton: chunked over tokens, never materialising the full (N, V) logits.

Per chunk of rows: the logits block ``hidden_c @ weight.T`` comes from cuBLAS (a torch matmul), then one Triton
program per row makes two passes over the vocabulary, an online max/sum-exp for the log-sum-exp and the loss, then
overwrites the logits in place with ``d loss / d logits = (softmax - onehot) / n_valid``. The chunk's gradients
for the hidden states and the weight are two more matmuls; like ``kernel.linear_ce`` (the reference), all gradients
are computed in the forward and only they are kept. This is Liger Kernel's FusedLinearCrossEntropy (Hsu et al.
2024, arXiv:2410.10989). ``n_valid`` stays on the device, so there is no host sync.

Shape legend: N tokens, D hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernel.linear_ce import check_linear_ce_inputs
from kernel.reference import matmul_dtype


@triton.jit
def _ce_rows(logits_ptr, stride, labels_ptr, loss_ptr, inv_n_ptr, V, ignore_index, WRITE_GRAD: tl.constexpr,
             BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ptr = logits_ptr + row * stride
    y = tl.load(labels_ptr + row)
    m = float("-inf")
    l = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(l)
    valid = y != ignore_index
    y_safe = tl.where(valid, y, 0)
    target = tl.load(ptr + y_safe).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))
    if WRITE_GRAD:
        scale = tl.where(valid, tl.load(inv_n_ptr), 0.0)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == y_safe, 1.0, 0.0)
            tl.store(ptr + cols, (g * scale).to(logits_ptr.dtype.element_ty), mask=cols < V)


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                ignore_index: int, chunk_size: int, fp32_logits: bool = True) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, V = hidden_ND.shape[0], weight_VD.shape[0]
        labels_N = labels_N.contiguous()
        inv_n = 1.0 / (labels_N != ignore_index).sum().clamp_min(1).to(torch.float32)
        inv_n = inv_n.reshape(1)
        loss_N = torch.empty(N, dtype=torch.float32, device=hidden_ND.device)
        grad_hs: list[torch.Tensor] = []
        grad_w: torch.Tensor | None = None
        block_v = min(4096, triton.next_power_of_2(V))
        for start in range(0, N, chunk_size):
            h_cD = hidden_ND[start:start + chunk_size]
            # fp32 logits per chunk keep fp32 accuracy; otherwise the matmul's own dtype (bf16 under autocast), the
            # layout of a plain logits + cross-entropy, and the row kernel turns them into the gradient in place
            logits_cV = h_cD @ weight_VD.T
            if fp32_logits:
                logits_cV = logits_cV.float()
            c = logits_cV.shape[0]
            _ce_rows[(c,)](logits_cV, logits_cV.stride(0), labels_N[start:start + c], loss_N[start:start + c], inv_n,
                           V, ignore_index, WRITE_GRAD=need_h or need_w, BLOCK_V=block_v,
                           num_warps=4 if fp32_logits else 8)
            if need_h or need_w:
                g_cV = logits_cV.to(h_cD.dtype) if fp32_logits else logits_cV  # the gradient, in the matmul dtype
                if need_h:
                    grad_hs.append(g_cV @ weight_VD)
                if need_w:
                    part = (g_cV.T @ h_cD).float()
                    grad_w = part if grad_w is None else grad_w.add_(part)
                del g_cV
            del logits_cV  # one (chunk, V) block alive at a time
        grad_h = (grad_hs[0] if len(grad_hs) == 1 else torch.cat(grad_hs)) if need_h else None
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (need_h, need_w)
        ctx.w_dtype, ctx.h_dtype = weight_VD.dtype, hidden_ND.dtype
        return loss_N.sum() * inv_n[0]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = list(ctx.saved_tensors)
        need_h, need_w = ctx.has
        grad_h = grad_w = None
        if need_h:  # (a frozen weight, e.g. LoRA's, saves grad_h alone)
            g = saved.pop(0)
            grad_h = (g * grad_out.to(g.dtype)).to(ctx.h_dtype)
        if need_w:
            grad_w = (saved.pop(0) * grad_out).to(ctx.w_dtype)
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                         ignore_index: int = -100, *, chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` over labels != ignore_index (0.0 when all are ignored)."""
    chunk = check_linear_ce_inputs(hidden_ND, weight_VD, labels_N, chunk_size)
    return _FusedLinearCE.apply(hidden_ND, weight_VD, labels_N, ignore_index, chunk)


# The (chunk, V) logits block of linear_cross_entropy_inplace: the whole batch when it fits (GPT-2 124M at 16 x 1024
# tokens: 1.65 GB in bf16), else as many rows as do.
INPLACE_BLOCK_BYTES = 2 << 30


def linear_cross_entropy_inplace(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                                 ignore_index: int = -100, *, chunk_size: int | None = None) -> torch.Tensor:
    """The same loss with the logits in the matmul's dtype (bf16 under autocast) and, memory permitting, the whole
    batch as one chunk: one large logits matmul like a plain ``F.linear`` + ``cross_entropy``, then one launch of the
    row kernel computes the loss and overwrites the logits with their gradient (two reads and one write of them),
    and the two gradient matmuls run in the forward. The plain path under torch.compile runs a loss kernel in the
    forward and a gradient kernel in the backward and keeps the logits alive in between; this one frees them at the
    end of the forward (on an H200: 1.18 ms against 2.36 ms for GPT-2's 16,384 x 50,304 logits)."""
    check_linear_ce_inputs(hidden_ND, weight_VD, labels_N, chunk_size)
    if chunk_size is None:
        elt = torch.finfo(matmul_dtype(hidden_ND)).bits // 8
        chunk_size = max(1, min(hidden_ND.shape[0], INPLACE_BLOCK_BYTES // (weight_VD.shape[0] * elt)))
    return _FusedLinearCE.apply(hidden_ND, weight_VD, labels_N, ignore_index, chunk_size, False)


def cross_entropy(logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of given logits (N, V): the same row kernel, gradient written into a copy of the logits."""
    return _CE.apply(logits_NV, labels_N, ignore_index)


class _CE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int) -> torch.Tensor:
        N, V = logits_NV.shape
        work = logits_NV.float().contiguous()
        if work.data_ptr() == logits_NV.data_ptr():
            work = work.clone()  # never overwrite the caller's logits
        inv_n = (1.0 / (labels_N != ignore_index).sum().clamp_min(1).to(torch.float32)).reshape(1)
        loss_N = torch.empty(N, dtype=torch.float32, device=logits_NV.device)
        _ce_rows[(N,)](work, work.stride(0), labels_N.contiguous(), loss_N, inv_n, V, ignore_index,
                       WRITE_GRAD=ctx.needs_input_grad[0], BLOCK_V=min(4096, triton.next_power_of_2(V)))
        ctx.save_for_backward(work)
        ctx.dtype = logits_NV.dtype
        return loss_N.sum() * inv_n[0]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.dtype), None, None
