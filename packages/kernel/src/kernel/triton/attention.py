"""Flash attention forward and backward in Triton (FlashAttention-2, Dao 2023, arXiv:2307.08691).

Tiled online-softmax attention that never forms the (T, S) score matrix in memory. Same contract as
``kernel.reference.attention``: GQA (query head h reads KV head h // (H // KVH), no repeat in memory),
bottom-right aligned causal masking (decode with T < S), an optional bool mask and an optional additive bias
(both read through broadcast strides, so a (B, 1, T, S) mask is never expanded), and rows with no visible key
give zeros. The forward stores the log-sum-exp per row (+inf for empty rows, so the backward's probabilities are 0
there). The backward follows FlashAttention-2: one kernel accumulates dK/dV per key block, one accumulates dQ per
query block; KV-head gradients are summed over their query-head group afterwards. The bias gets no gradient.
Layout after the Triton fused-attention tutorial (Tillet et al.). Not autotuned: fixed tiles per head dim.

Shape legend: B batch, H query heads, KVH key/value heads, T queries, S keys, Dh head dim.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

from kernel.reference import check_attention_inputs
from specs.errors import ShapeError


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """DOT 0: native (tf32 / fp16 / bf16 tensor cores); 1: exact fp32; 2: upcast first (the interpreter's bf16)."""
    if DOT == 1:
        return tl.dot(a, b, input_precision="ieee")
    if DOT == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(q, k_ptrs, kv_ok, kn, offs_m, b, h, T, S, OFFSET, scale, mask_ptr, smb, smh, smt, sms, bias_ptr, sbb,
            sbh, sbt, sbs, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr):
    """Scaled scores (BLOCK_M, BLOCK_N) of q (BLOCK_M, Dh) against a key block, -inf where not allowed."""
    k = tl.load(k_ptrs, mask=kv_ok, other=0.0)  # (BLOCK_D, BLOCK_N)
    s = _dot(q, k, DOT) * scale
    allowed = (kn < S)[None, :] & (offs_m < T)[:, None]
    if CAUSAL:
        allowed = allowed & (kn[None, :] <= offs_m[:, None] + OFFSET)
    if HAS_MASK:
        m_ptrs = mask_ptr + b * smb + h * smh + offs_m[:, None].to(tl.int64) * smt + kn[None, :] * sms
        allowed = allowed & (tl.load(m_ptrs, mask=allowed, other=0) != 0)
    if HAS_BIAS:
        b_ptrs = bias_ptr + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbt + kn[None, :] * sbs
        s += tl.load(b_ptrs, mask=allowed, other=0.0).to(tl.float32)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def _fwd(Q, K, V, O, LSE, MASK, BIAS, sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot,
         smb, smh, smt, sms, sbb, sbh, sbt, sbs, H, GROUP, T, S, D, OFFSET, scale,
         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    kh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dok = offs_d < D
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :],
                mask=row_ok[:, None] & dok[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = S
    if CAUSAL:  # key blocks past the block's last query position are fully masked: skip them
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M + OFFSET)
    for start_n in range(0, hi, BLOCK_N):
        kn = start_n + offs_n
        k_ptrs = K + b * skb + kh * skh + kn[None, :].to(tl.int64) * sks + offs_d[:, None]
        s = _scores(q, k_ptrs, (kn < S)[None, :] & dok[:, None], kn, offs_m, b, h, T, S, OFFSET, scale, MASK, smb,
                    smh, smt, sms, BIAS, sbb, sbh, sbt, sbs, CAUSAL, HAS_MASK, HAS_BIAS, DOT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at zero
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + kh * svh + kn[:, None].to(tl.int64) * svs + offs_d[None, :],
                    mask=(kn < S)[:, None] & dok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT)
        m_i = m_new
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & dok[None, :])
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("inf"))  # +inf: p = 0 in the backward
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, MASK, BIAS, sqb, sqh, sqt, skb, skh, sks, svb, svh, svs,
              smb, smh, smt, sms, sbb, sbh, sbt, sbs, H, GROUP, T, S, D, OFFSET, scale,
              CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK, dV (per query head, fp32) for one key block, looping over query blocks. q/do/dq share q's strides."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    kh = h // GROUP
    kn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dok = offs_d < D
    k_ptrs = K + b * skb + kh * skh + kn[None, :].to(tl.int64) * sks + offs_d[:, None]  # (BLOCK_D, BLOCK_N)
    k_ok = (kn < S)[None, :] & dok[:, None]
    v = tl.load(V + b * svb + kh * svh + kn[:, None].to(tl.int64) * svs + offs_d[None, :],
                mask=(kn < S)[:, None] & dok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo = 0
    if CAUSAL:  # queries before position pid_n * BLOCK_N cannot see this block
        lo = tl.maximum(0, pid_n * BLOCK_N - OFFSET) // BLOCK_M * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        qd = b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :]
        q = tl.load(Q + qd, mask=row_ok[:, None] & dok[None, :], other=0.0)
        do = tl.load(DO + qd, mask=row_ok[:, None] & dok[None, :], other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
        s = _scores(q, k_ptrs, k_ok, kn, offs_m, b, h, T, S, OFFSET, scale, MASK, smb, smh, smt, sms, BIAS, sbb,
                    sbh, sbt, sbs, CAUSAL, HAS_MASK, HAS_BIAS, DOT)
        p = tl.exp(s - lse[:, None])  # (BLOCK_M, BLOCK_N); 0 where masked or the row is empty
        dv += _dot(tl.trans(p).to(do.dtype), do, DOT)
        dp = _dot(do, tl.trans(v), DOT)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, DOT)
    out = b * H * S * D + h * S * D + kn[:, None].to(tl.int64) * D + offs_d[None, :]  # (B, H, S, D) buffers
    ok = (kn < S)[:, None] & dok[None, :]
    tl.store(DK + out, dk * scale, mask=ok)
    tl.store(DV + out, dv, mask=ok)


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, MASK, BIAS, sqb, sqh, sqt, skb, skh, sks, svb, svh, svs,
            smb, smh, smt, sms, sbb, sbh, sbt, sbs, H, GROUP, T, S, D, OFFSET, scale,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ for one query block, looping over key blocks."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    kh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dok = offs_d < D
    row_ok = offs_m < T
    qd = b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :]
    q = tl.load(Q + qd, mask=row_ok[:, None] & dok[None, :], other=0.0)
    do = tl.load(DO + qd, mask=row_ok[:, None] & dok[None, :], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M + OFFSET)
    for start_n in range(0, hi, BLOCK_N):
        kn = start_n + offs_n
        k_ptrs = K + b * skb + kh * skh + kn[None, :].to(tl.int64) * sks + offs_d[:, None]
        k_ok = (kn < S)[None, :] & dok[:, None]
        s = _scores(q, k_ptrs, k_ok, kn, offs_m, b, h, T, S, OFFSET, scale, MASK, smb, smh, smt, sms, BIAS, sbb,
                    sbh, sbt, sbs, CAUSAL, HAS_MASK, HAS_BIAS, DOT)
        p = tl.exp(s - lse[:, None])
        v = tl.load(V + b * svb + kh * svh + kn[:, None].to(tl.int64) * svs + offs_d[None, :],
                    mask=(kn < S)[:, None] & dok[None, :], other=0.0)
        ds = p * (_dot(do, tl.trans(v), DOT) - delta[:, None])
        k = tl.load(k_ptrs, mask=k_ok, other=0.0)
        dq += _dot(ds.to(k.dtype), tl.trans(k), DOT)
    tl.store(DQ + qd, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & dok[None, :])


def _dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 1
    # Triton 3.9's interpreter (TRITON_INTERPRET=1) computes tl.dot on bf16 operands wrongly; upcast there only.
    return 2 if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1" else 0


def _tiles(D: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(D))
    return (64 if block_d <= 128 else 32), (64 if block_d <= 64 else 32), block_d


def _aux_strides(t: torch.Tensor | None, shape: tuple[int, int, int, int], fallback: torch.Tensor):
    """A broadcast (B, H, T, S) view of a mask/bias and its strides (zeros where broadcast), or a dummy."""
    if t is None:
        return fallback, (0, 0, 0, 0)
    t = t.expand(shape)
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t, tuple(t.stride())


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                bias: torch.Tensor | None, causal: bool, scale: float) -> torch.Tensor:
        B, H, KVH, T, S, D = check_attention_inputs(q, k, v)
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        q = q.contiguous()  # q, dO and dQ share strides in the backward
        o = torch.empty_like(q)
        lse = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
        m, ms = _aux_strides(mask, (B, H, T, S), q)
        bi, bs = _aux_strides(bias, (B, H, T, S), q)
        bm, bn, bd = _tiles(D)
        _fwd[(triton.cdiv(T, bm), B * H)](
            q, k, v, o, lse, m, bi, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *ms, *bs,
            H, H // KVH, T, S, D, S - T, scale, CAUSAL=causal, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
            DOT=_dot_mode(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
        ctx.save_for_backward(q, k, v, o, lse, m, bi)
        ctx.meta = (causal, scale, mask is not None, bias is not None, ms, bs)
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse, m, bi = ctx.saved_tensors
        causal, scale, has_mask, has_bias, ms, bs = ctx.meta
        B, H, T, D = q.shape
        KVH, S = k.shape[1], k.shape[2]
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1)  # (B, H, T): rowsum(dO * O), FlashAttention-2's D
        dq = torch.empty_like(q)
        dk = torch.empty((B, H, S, D), dtype=torch.float32, device=q.device)
        dv = torch.empty((B, H, S, D), dtype=torch.float32, device=q.device)
        bm, bn, bd = _tiles(D)
        common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *bs, H, H // KVH, T, S, D, S - T, scale)
        flags = dict(CAUSAL=causal, HAS_MASK=has_mask, HAS_BIAS=has_bias, DOT=_dot_mode(q.dtype),
                     BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
        _bwd_dkdv[(triton.cdiv(S, bn), B * H)](q, k, v, do, lse, delta, dk, dv, m, bi, *common, **flags)
        _bwd_dq[(triton.cdiv(T, bm), B * H)](q, k, v, do, lse, delta, dq, m, bi, *common, **flags)
        group = H // KVH
        dk = dk.view(B, KVH, group, S, D).sum(2).to(k.dtype)
        dv = dv.view(B, KVH, group, S, D).sum(2).to(v.dtype)
        return dq, dk, dv, None, None, None, None


def attention(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Flash attention (forward and backward) with the ``kernel.reference.attention`` contract; (B, H, T, Dh)."""
    _, _, _, T, S, D = check_attention_inputs(q_BHTDh, k_BKSDh, v_BKSDh)
    if causal and T > S:
        raise ShapeError(f"attention: causal needs T <= S (queries are the last T keys), got T={T}, S={S}")
    if mask is not None and mask.dtype != torch.bool:
        raise ShapeError(f"attention: mask must be bool (True = may attend), got {mask.dtype}")
    if not (q_BHTDh.dtype == k_BKSDh.dtype == v_BKSDh.dtype):
        raise ShapeError(f"attention: q, k, v dtypes differ ({q_BHTDh.dtype}, {k_BKSDh.dtype}, {v_BKSDh.dtype})")
    return _FlashAttention.apply(q_BHTDh, k_BKSDh, v_BKSDh, mask, bias, causal, D**-0.5 if scale is None else scale)
