"""The ``lora`` op's pure-torch reference (many LoRA adapters in one batch, each row its own; Punica's BGMV
semantics), and the dense form the Triton implementation (``kernel.triton.lora``) falls back to past a decode
batch. lmstack-compress's ``MultiLoRA`` calls the op and builds :func:`lora_mask` once a step.

Shape legend: N tokens (B rows of T), I in, O out, S slots, P parts, R rank, W = S*P*R.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specs.errors import ShapeError


def check_lora(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, rows: torch.Tensor,
               scales: torch.Tensor, bounds: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Validate :func:`lora`'s arguments; returns (S slots, P parts, R rank, T tokens a row)."""
    if y.dim() != 2 or x.dim() != 2 or y.shape[0] != x.shape[0] or not y.is_contiguous():
        raise ShapeError(f"lora: y (N, O) contiguous and x (N, I) with equal N, got {tuple(y.shape)} and "
                         f"{tuple(x.shape)}")
    S, P = scales.numel(), len(bounds) - 1
    W = lora_a.shape[0]
    if P < 1 or list(bounds) != sorted(bounds) or bounds[0] != 0 or bounds[-1] != y.shape[1]:
        raise ShapeError(f"lora: bounds {bounds} must rise from 0 to y's width {y.shape[1]}")
    if S < 1 or W % (S * P) or lora_a.shape != (W, x.shape[1]) or lora_b.shape != (W, y.shape[1]):
        raise ShapeError(f"lora: lora_a (S*P*R, I) and lora_b (S*P*R, O) for S={S} slots and P={P} parts, got "
                         f"{tuple(lora_a.shape)} and {tuple(lora_b.shape)} (x {tuple(x.shape)}, y {tuple(y.shape)})")
    if rows.dim() != 1 or rows.numel() == 0 or x.shape[0] % rows.numel():
        raise ShapeError(f"lora: rows (B,) must divide the {x.shape[0]} tokens, got {tuple(rows.shape)}")
    return S, P, W // (S * P), x.shape[0] // rows.numel()


def lora_mask(rows: torch.Tensor, scales: torch.Tensor, parts: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense form's row masks (B, S*P*R): row b holds its slot's scaling over that slot's P*R columns and
    zeros elsewhere (all zeros for a row without an adapter, slot S)."""
    S = scales.numel()
    table = torch.cat([torch.diag(scales.to(dtype)), scales.new_zeros(1, S, dtype=dtype)])  # (S + 1, S)
    return table[rows][:, :, None].expand(-1, S, parts * rank).reshape(rows.numel(), -1)


def lora_dense(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, rows: torch.Tensor,
               scales: torch.Tensor, bounds: tuple[int, ...], dtype: torch.dtype | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`lora` as two dense matmuls over every slot, the rows' other slots masked to zero (in ``dtype``;
    None: float32). Fixed shapes, no branch on the rows' slots. ``mask``: the rows' (B, S*P*R) masks if the caller
    built them (once a step for every layer; :func:`lora_mask` shows what they hold), else built here."""
    S, P, R, T = check_lora(y, x, lora_a, lora_b, rows, scales, bounds)
    dt = dtype or torch.float32
    if mask is None:
        mask = lora_mask(rows, scales, P, R, dt)
    xa_BTW = F.linear(x.to(dt), lora_a.to(dt)).view(rows.numel(), T, -1) * mask.to(dt)[:, None]
    xa_NW = xa_BTW.view(x.shape[0], -1)
    if dt == y.dtype:
        return y.addmm_(xa_NW, lora_b.to(dt))
    return y.copy_(y + (xa_NW @ lora_b.to(dt)).to(y.dtype))


def lora(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, rows: torch.Tensor,
         scales: torch.Tensor, bounds: tuple[int, ...], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Many LoRA adapters a batch, each row its own (Punica's BGMV): in place, ``y[n, part p] += scale[s] *
    (x[n] @ A[s, p].T) @ B[s, p]`` with ``s = rows[n // T]`` (T tokens a row; ``s == S``: no adapter, y unchanged).

    y (N, O) contiguous, x (N, I); ``lora_a`` (S*P*R, I) holds slot s's part p's A (R, I) at rows
    ``(s*P + p)*R``; ``lora_b`` (S*P*R, O) its B transposed (R, O), nonzero only in the part's columns
    ``bounds[p]:bounds[p+1]``; ``scales`` (S,) each slot's alpha / r (fp32); ``rows`` (B,) int64 slots. ``mask``
    (B, S*P*R), optional: the rows' masks for the dense form (:func:`lora_dense`). Float32 math here. Returns y."""
    return lora_dense(y, x, lora_a, lora_b, rows, scales, bounds, mask=mask)
