"""Decode attention in Triton: one new query token per row against that row's cached keys, paged or not.

A decode step attends one query per row to the first ``lens[b]`` key slots of its row. One program per (row,
KV head) loads the group of query heads that share the KV head (GQA: the K/V tiles are read once for the whole
group, never repeated per query head), walks the row's slots ``BLOCK_S`` at a time up to its length (a loop bound
read on the device, so a CUDA graph replays it at any length) with the online softmax of FlashAttention (Dao et al.
2022), and writes (H, Dh). With a block table the slots are found through it (vLLM's PagedAttention, Kwon et al.
2023): slot s of row b is at ``block_table[b, s // block_size] * block_size + s % block_size`` of the pool.
No mask is built and nothing past a row's length is read. Semantics: :func:`kernel.reference.decode_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel.reference import check_decode_inputs
from kernel.triton.attention import _dot, _dot_mode

BLOCK_S = 64


@triton.jit
def _decode(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr,
            stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
            stride_tb, stride_ob, stride_oh, scale, G, Dh,
            PAGED: tl.constexpr, PAGE: tl.constexpr, DOT: tl.constexpr,
            BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    n = tl.load(lens_ptr + b)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_ok, d_ok = g < G, d < Dh
    h = kvh * G + g
    q = tl.load(q_ptr + b * stride_qb + h[:, None] * stride_qh + d[None, :], mask=g_ok[:, None] & d_ok[None, :],
                other=0.0)  # (BLOCK_G, BLOCK_D)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for s0 in range(0, n, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < n
        if PAGED:
            blk = tl.load(table_ptr + b * stride_tb + s // PAGE, mask=s_ok, other=0).to(tl.int64)
            slot = blk * PAGE + s % PAGE
            k_off = slot * stride_ks + kvh * stride_kh
            v_off = slot * stride_vs + kvh * stride_vh
        else:
            k_off = b * stride_kb + kvh * stride_kh + s.to(tl.int64) * stride_ks
            v_off = b * stride_vb + kvh * stride_vh + s.to(tl.int64) * stride_vs
        kv_ok = s_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=kv_ok, other=0.0)  # (BLOCK_S, BLOCK_D)
        # (BLOCK_G, BLOCK_S) fp32; inductor's launcher passes a Python float as fp64
        scores = (_dot(q, tl.trans(k), DOT) * scale).to(tl.float32)
        scores = tl.where(s_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=kv_ok, other=0.0)
        # p stays fp32 (tf32 on tensor cores, 10 mantissa bits, not bf16's 7): the FLOPs are free in a decode step
        acc = acc * alpha[:, None] + _dot(p, v.to(tl.float32), 1 if DOT == 1 else 0)
        m_i = m_new
    out = tl.where(l_i[:, None] > 0, acc / tl.maximum(l_i, 1e-30)[:, None], 0.0)  # an empty row gives zeros
    tl.store(o_ptr + b * stride_ob + h[:, None] * stride_oh + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=g_ok[:, None] & d_ok[None, :])


def decode_attention(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                     block_table: torch.Tensor | None = None, block_size: int | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """(B, H, Dh) queries against per-row (B, KVH, L, Dh) buffers, or a (slots, KVH, Dh) pool with ``block_table``
    (B, NB) and ``block_size``; ``lens_B`` valid slots per row. Returns (B, H, Dh) in q's dtype."""
    B, H, KVH, Dh = check_decode_inputs(q_BHDh, k, v, lens_B, block_table, block_size)
    G = H // KVH
    q = q_BHDh if q_BHDh.stride(-1) == 1 else q_BHDh.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    out = torch.empty(B, H, Dh, dtype=q.dtype, device=q.device)
    paged = block_table is not None
    if paged:
        table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
        kb = vb = 0
        kh, ks, vh, vs, tb = k.stride(1), k.stride(0), v.stride(1), v.stride(0), table.stride(0)
    else:
        table = lens_B  # unused
        kb, kh, ks, vb, vh, vs, tb = k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), 0
    _decode[(B, KVH)](q, k, v, lens_B, table, out, q.stride(0), q.stride(1), kb, kh, ks, vb, vh, vs, tb,
                      out.stride(0), out.stride(1), Dh ** -0.5 if scale is None else scale, G, Dh,
                      PAGED=paged, PAGE=block_size or 1, DOT=_dot_mode(q.dtype),
                      BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_S=BLOCK_S,
                      BLOCK_D=max(16, triton.next_power_of_2(Dh)))
    return out
