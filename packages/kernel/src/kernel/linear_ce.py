"""Chunked linear + cross-entropy that never materialises the full (N, V) logits, forward or backward.

The loss of ``hidden_ND @ weight_VD.T`` against ``labels_N`` is computed chunk by chunk over N; the gradients of
each chunk (``(softmax - onehot) / n_valid`` times the weight or hidden) are computed right away, in the forward,
and kept instead of the logits. Peak extra memory is one (chunk, V) fp32 block. This is the approach of Liger
Kernel's FusedLinearCrossEntropy (Hsu et al. 2024, arXiv:2410.10989) and Apple's Cut Cross-Entropy
(Wijmans et al. 2024, arXiv:2411.09009), written in plain torch.

Shape legend: N tokens, D hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from specs.errors import ShapeError
from specs.tensor_spec import TensorSpec

_HIDDEN = TensorSpec("N", "D")
_WEIGHT = TensorSpec("V", "D")
_LABELS = TensorSpec("N")


def default_chunk_size(N: int, V: int, D: int) -> int:
    """Rows per chunk so that one (chunk, V) logits block is about the size of the (N, D) hidden states (Liger), but
    at least 256 rows: thinner chunks make the weight-gradient accumulation memory-bound (1.7x slower training steps
    on CPU at V=32000, D=512)."""
    return max(1, min(N, max(256, _next_power_of_2(-(-N // max(1, -(-V // D)))))))


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                ignore_index: int, chunk_size: int) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden_ND.dtype, torch.float32)  # fp32 math for fp16/bf16, fp64 stays fp64
        valid_N = labels_N != ignore_index
        n_valid = valid_N.sum().clamp_min(1).to(acc)
        loss = torch.zeros((), dtype=acc, device=hidden_ND.device)
        grad_h = torch.empty(hidden_ND.shape, dtype=acc, device=hidden_ND.device) if need_h else None
        grad_w = torch.zeros(weight_VD.shape, dtype=acc, device=weight_VD.device) if need_w else None
        weight_f = weight_VD.to(acc) if need_h else None  # one fp32 copy, not one per chunk
        for start in range(0, hidden_ND.shape[0], chunk_size):
            h_cD = hidden_ND[start:start + chunk_size]
            y_c = labels_N[start:start + chunk_size]
            ok_c = valid_N[start:start + chunk_size]
            logits_cV = (h_cD @ weight_VD.T).to(acc)
            lse_c = torch.logsumexp(logits_cV, dim=-1)
            target_c = logits_cV.gather(1, y_c.clamp_min(0)[:, None]).squeeze(1)
            loss += ((lse_c - target_c) * ok_c).sum()
            if need_h or need_w:
                # d loss / d logits = (softmax - onehot) / n_valid on valid rows, 0 on ignored rows
                g_cV = torch.exp(logits_cV - lse_c[:, None])
                g_cV.scatter_add_(1, y_c.clamp_min(0)[:, None], -torch.ones_like(lse_c)[:, None])
                g_cV *= (ok_c.to(acc) / n_valid)[:, None]
                if grad_h is not None and weight_f is not None:
                    grad_h[start:start + chunk_size] = g_cV @ weight_f
                if grad_w is not None:
                    grad_w += g_cV.T @ h_cD.to(acc)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (need_h, need_w)
        ctx.dtypes = (hidden_ND.dtype, weight_VD.dtype)
        return loss / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = list(ctx.saved_tensors)
        need_h, need_w = ctx.has
        grad_h = (saved.pop(0) * grad_out).to(ctx.dtypes[0]) if need_h else None
        grad_w = (saved.pop(0) * grad_out).to(ctx.dtypes[1]) if need_w else None
        return grad_h, grad_w, None, None, None


def check_linear_ce_inputs(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                           chunk_size: int | None) -> int:
    """Validate shapes and dtypes; returns the chunk size to use."""
    env = _HIDDEN.check(hidden_ND, "hidden_ND")
    _WEIGHT.check(weight_VD, "weight_VD", D=env["D"])
    _LABELS.check(labels_N, "labels_N", N=env["N"])
    if chunk_size is not None and chunk_size <= 0:
        raise ShapeError(f"linear_cross_entropy: chunk_size must be > 0, got {chunk_size}")
    if hidden_ND.dtype != weight_VD.dtype:
        raise ShapeError(f"linear_cross_entropy: hidden dtype {hidden_ND.dtype} != weight dtype {weight_VD.dtype}")
    return chunk_size or default_chunk_size(env["N"], weight_VD.shape[0], env["D"])


def chunked_linear_cross_entropy(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                                 ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy over labels != ignore_index (0.0 when all are ignored); a float32 (or float64) scalar."""
    chunk = check_linear_ce_inputs(hidden_ND, weight_VD, labels_N, chunk_size)
    return _ChunkedLinearCE.apply(hidden_ND, weight_VD, labels_N, ignore_index, chunk)
