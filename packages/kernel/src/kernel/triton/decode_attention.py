"""Decode attention in Triton: one new query token per row against that row's cached keys, paged or not.

A decode step attends one query per row to the first ``lens[b]`` key slots of its row. One program per (row,
KV head) loads the group of query heads that share the KV head (GQA: the K/V tiles are read once for the whole
group, never repeated per query head), walks the row's slots a block at a time (:func:`block_s`) up to its length
(a loop bound read on the device, so a CUDA graph replays it at any length) with the online softmax of
FlashAttention (Dao et al. 2022), and writes (H, Dh). With a block table the slots are found through it (vLLM's
PagedAttention, Kwon et al. 2023): slot s of row b is at ``block_table[b, s // block_size] * block_size + s %
block_size`` of the pool. No mask is built and nothing past a row's length is read. Semantics:
:func:`kernel.reference.decode_attention`.

When (row, KV head) programs alone are too few to fill the GPU (a small batch), the slots are split as well
(flash-decoding, Dao et al. 2023; vLLM's paged attention v2): :func:`num_splits` picks the split count from shapes
that stay fixed between CUDA-graph replays (rows, KV heads, the rows' slot capacity, the SM count), never from the
lengths. Split i of a row of n slots takes the i-th chunk of ``cdiv(cdiv(n, splits), block) * block`` slots
(computed on the device; trailing splits may get none) and writes its unnormalised output with its running max and
sum to fp32 buffers; a second kernel rescales the splits to a common max and normalises, in a fixed order. Given
``split_counters`` (a zeroed int32 buffer of at least B x KVH entries that the caller keeps, e.g. the KV cache), the
split programs combine without that kernel: each counts itself done with an atomic add on its (row, KV head)'s
counter once its partials are written, and the last one to finish (the one that sees NS - 1) combines the group's
partials, in the same fixed order, and sets the counter back to zero (CUTLASS's split-K "serial" reduction).

:func:`decode_attention_unified` (kernel 0.22) needs no combine kernel: the splits of a head share one softmax shift,
the larger of the scores of the new token's own key and of slot 0's, and add their shifted partials to per-layer
fp32 accumulators with atomics; the output projection divides the outputs by the sums as it reads them
(``kernel.triton.gemv``'s ``att``). A split whose max passes the shift by more than e^30 flags its row, and the
reader combines the stored partials instead. Measured in 22 PDL-chained layers of the 1.1B shape on an H200: 0.7-1.1
us a layer faster for int8 and bf16 weights (docs/benchmarks.md, runs CP-CQ); in whole decode steps (the registry's
``decode_attention_unified`` op, kernel 0.23) 4.1% faster for bf16 weights but 2.8% slower for int8 (runs CS-CU).

Given the step's new key and value (``k_new``, ``v_new``) and RoPE angles, the kernel also does what would otherwise
be three or four kernels before it: it rotates q and the new key, the first split of each (row, KV head) writes the
key and value to slot ``lens - 1``, and every program reads that slot's key and value from the arguments rather
than from the cache (whose write it may race), so no program depends on another.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernel.reference import UnifiedParts, check_decode_inputs, check_new_token, check_rope_tables, check_split_counters
from kernel.triton._device import device_info, pdl_capable
from kernel.triton._pdl import pdl_enter, pdl_mode
from kernel.triton.attention import _dot, _dot_mode
from kernel.triton.decode_unified import _unified, _unified_shift, check_unified, unified_mode
from specs.errors import ConfigError, ShapeError

# key slots a loop step: BLOCK_S, or fewer for short chunks (:func:`block_s`); the splits are counted in MIN_BLOCK_S
# blocks. A batch-1 step over the 384-slot cache ran 24 splits of 16 slots at 1,867-1,883 int8 tokens/s against
# 1,637-1,772 for 6 of 64 (bf16 level: 1,393-1,424 against 1,370-1,418) on an H200, docs/benchmarks.md runs AU-AW
BLOCK_S = 64
MIN_BLOCK_S = 16
MAX_SPLITS = 32
# a split count for every call, for comparisons (unset: num_splits decides); read when a call runs or is traced (a
# compiled step keeps the count it was traced with), so set it before the process starts
SPLITS_ENV = "LMSTACK_DECODE_SPLITS"
# tests: the split kernel loads its first block before it knows the row's length (as under PDL) without PDL too,
# so the interpreter, which has no PDL, checks that path's results
EARLY_WITHOUT_PDL = False


@triton.jit
def _decode(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr, acc_ptr, m_ptr, l_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr,
            cnt_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
            stride_tb, stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, stride_cb,
            scale, G, Dh, H, NS, KVH, L, ws_ptr, zero_ptr, WS,
            PAGED: tl.constexpr, PAGE: tl.constexpr, DOT: tl.constexpr, SPLIT: tl.constexpr, NEW: tl.constexpr,
            ROPE: tl.constexpr, COMBINE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
            ROPE_AT_POS: tl.constexpr, UNIFIED: tl.constexpr):
    _attend(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr, acc_ptr, m_ptr, l_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr,
            cnt_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
            stride_tb, stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, stride_cb,
            scale, G, Dh, H, NS, KVH, L, tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64),
            tl.program_id(2) if SPLIT else 0, PAGED, PAGE, DOT, SPLIT, NEW, ROPE, COMBINE, BLOCK_G, BLOCK_S, BLOCK_D,
            BLOCK_N, "", PDL, EARLY, ROPE_AT_POS, ws_ptr, zero_ptr, WS, UNIFIED)


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr, acc_ptr, m_ptr, l_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr,
            cnt_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
            stride_tb, stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, stride_cb,
            scale, G, Dh, H, NS, KVH, L, b, kvh, split,
            PAGED: tl.constexpr, PAGE: tl.constexpr, DOT: tl.constexpr, SPLIT: tl.constexpr, NEW: tl.constexpr,
            ROPE: tl.constexpr, COMBINE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, QKV_LOAD: tl.constexpr, PDL: tl.constexpr,
            EARLY: tl.constexpr, ROPE_AT_POS: tl.constexpr, ws_ptr, zero_ptr, WS, UNIFIED: tl.constexpr):
    """The work of one program of :func:`_decode`, (row b, KV head kvh, slot split ``split``): also the attention
    stage of ``decode_layer``'s persistent kernel, whose q, new key and value another program of the same kernel
    wrote (``QKV_LOAD=".cg"``: read from L2). ``L``: a fixed cache's slots per row. ``ROPE_AT_POS``: cos/sin are
    (P, Dh) tables, this row's angles the row at its new slot, n - 1.

    ``PDL``: launched while the kernel before drains; the program reads nothing that kernel may have written (the
    row lengths included) before it waits for it, then lets the next kernel start (PDL 2: before the wait,
    :mod:`kernel.triton._pdl`). ``EARLY`` (with the step's new
    token, ``NEW``, and a fixed cache): before that wait, the program loads the block of cached keys and values its
    chunk starts at when chunks are one block long (the usual case: rows of at most ``NS x BLOCK_S`` slots); no
    kernel of the step writes those slots (this one writes slot n - 1 itself and reads it from the arguments). Once
    the length is known, a chunk that starts elsewhere loads its block again. After the wait the length, q, and the
    new key and value are loaded together, before anything that depends on the length (kernel 0.16: before, q and
    the new token waited behind the length's round trip), so the RoPE angles at the length are the one load that
    follows another.

    ``UNIFIED`` (split, with the new token, a fixed cache): besides its partials, the program adds its share of the
    softmax taken against one shift for all splits of a head to the ``ws_ptr`` accumulators (row b at ``b * WS``:
    H x Dh outputs, H sums, a flag), and the first split of each (row, KV head) zeroes its heads' entries of
    ``zero_ptr`` (another layer's accumulators, for their next use): :func:`_unified`."""
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_ok, d_ok = g < G, d < Dh
    h = kvh * G + g
    guess = split * BLOCK_S  # where a one-block chunk starts
    if EARLY:
        k0, v0 = _kv_block(k_ptr, v_ptr, table_ptr, b, kvh, guess + tl.arange(0, BLOCK_S), L, d, d_ok, stride_kb,
                           stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_tb, PAGED, PAGE)
    k_first = 0.0
    if UNIFIED:  # slot 0's key (a fixed cache: no kernel before this one in the step writes it)
        k_first = tl.load(k_ptr + b * stride_kb + kvh * stride_kh + d, mask=d_ok, other=0.0)
    pdl_enter(PDL)
    # the length, q, and the new key and value in one round trip: nothing here waits for another of them
    n = tl.load(lens_ptr + b)
    q = tl.load(q_ptr + b * stride_qb + h[:, None] * stride_qh + d[None, :], mask=g_ok[:, None] & d_ok[None, :],
                other=0.0, cache_modifier=QKV_LOAD)  # (BLOCK_G, BLOCK_D)
    if ROPE:  # rotate-half RoPE of q and the new key, in fp32: x * cos + rotate_half(x) * sin
        half = Dh // 2
        d_rot = tl.where(d < half, d + half, d - half)
        sign = tl.where(d < half, -1.0, 1.0)
        q_rot = tl.load(q_ptr + b * stride_qb + h[:, None] * stride_qh + d_rot[None, :],
                        mask=g_ok[:, None] & d_ok[None, :], other=0.0, cache_modifier=QKV_LOAD)
    kn = 0.0  # unused without the new token
    vn = 0.0
    if NEW:  # the step's own key/value: slot n - 1 is read from here, and written to the cache by one program
        kn = tl.load(kn_ptr + b * stride_knb + kvh * stride_knh + d, mask=d_ok, other=0.0, cache_modifier=QKV_LOAD)
        vn = tl.load(vn_ptr + b * stride_vnb + kvh * stride_vnh + d, mask=d_ok, other=0.0,
                     cache_modifier=QKV_LOAD).to(v_ptr.dtype.element_ty)
        if ROPE:
            kn_rot = tl.load(kn_ptr + b * stride_knb + kvh * stride_knh + d_rot, mask=d_ok, other=0.0,
                             cache_modifier=QKV_LOAD)
    lo, hi = _chunk(n, split, NS, SPLIT, BLOCK_S)
    s0 = lo + tl.arange(0, BLOCK_S)
    if EARLY:  # the early block where the chunk starts there (its slots past hi zeroed), else loaded now
        again = lo != guess
        k1, v1 = _kv_block(k_ptr, v_ptr, table_ptr, b, kvh, s0, tl.where(again, hi, 0), d, d_ok, stride_kb,
                           stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_tb, PAGED, PAGE)
        keep = ((s0 < hi) & (lo == guess))[:, None]
        k0 = tl.where(keep, k0, k1)
        v0 = tl.where(keep, v0, v1)
    else:
        k0, v0 = _kv_block(k_ptr, v_ptr, table_ptr, b, kvh, s0, hi, d, d_ok, stride_kb, stride_kh, stride_ks,
                           stride_vb, stride_vh, stride_vs, stride_tb, PAGED, PAGE)
    if ROPE:
        cos, sin = _angles(cos_ptr, sin_ptr, b, n, stride_cb, d, d_ok, ROPE_AT_POS)
        q = (q.to(tl.float32) * cos[None, :] + sign[None, :] * q_rot.to(tl.float32) * sin[None, :]).to(q.dtype)
    if NEW:
        if ROPE:
            kn = kn.to(tl.float32) * cos + sign * kn_rot.to(tl.float32) * sin
        kn = kn.to(k_ptr.dtype.element_ty)
        last = (n - 1).to(tl.int64)
        if (split == 0) & (n > 0):
            if PAGED:
                blk = tl.load(table_ptr + b * stride_tb + last // PAGE).to(tl.int64)
                k_w = (blk * PAGE + last % PAGE) * stride_ks + kvh * stride_kh
                v_w = (blk * PAGE + last % PAGE) * stride_vs + kvh * stride_vh
            else:
                k_w = b * stride_kb + kvh * stride_kh + last * stride_ks
                v_w = b * stride_vb + kvh * stride_vh + last * stride_vs
            tl.store(k_ptr + k_w + d, kn, mask=d_ok)
            tl.store(v_ptr + v_w + d, vn, mask=d_ok)
    phi = 0.0
    if UNIFIED:  # the shift, now: q, the new key and slot 0's need not stay live through the loop
        phi = _unified_shift(q, kn, k_first, n, scale)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    if hi > lo:
        m_i, l_i, acc = _block(q, k0, v0, s0, hi, n, kn, vn, m_i, l_i, acc, scale, NEW, DOT)
    for s0 in range(lo + BLOCK_S, hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        k, v = _kv_block(k_ptr, v_ptr, table_ptr, b, kvh, s, hi, d, d_ok, stride_kb, stride_kh, stride_ks, stride_vb,
                         stride_vh, stride_vs, stride_tb, PAGED, PAGE)
        m_i, l_i, acc = _block(q, k, v, s, hi, n, kn, vn, m_i, l_i, acc, scale, NEW, DOT)
    gd_ok = g_ok[:, None] & d_ok[None, :]
    if SPLIT:  # unnormalised partials; an empty chunk leaves m = -inf, l = 0, acc = 0, which _combine ignores
        part = (b * H + h) * NS + split  # (BLOCK_G,) rows of the (B, H, NS) buffers
        tl.store(m_ptr + part, m_i, mask=g_ok)
        tl.store(l_ptr + part, l_i, mask=g_ok)
        tl.store(acc_ptr + part[:, None] * Dh + d[None, :], acc, mask=gd_ok)
        if UNIFIED:
            _unified(ws_ptr, zero_ptr, WS, b, kvh, split, h, d, g_ok, d_ok, phi, lo, hi, m_i, l_i, acc, G, H, Dh,
                     BLOCK_G, BLOCK_D, UNIFIED)
        if COMBINE:  # the last split of this (row, KV head) to finish combines the group's partials
            tl.debug_barrier()  # every thread's partial stores before the count that publishes them
            done = tl.atomic_add(cnt_ptr + b * KVH + kvh, 1, sem="acq_rel", scope="gpu")
            if done == NS - 1:
                sp = tl.arange(0, BLOCK_N)
                parts = (b * H + h)[:, None] * NS + sp[None, :]  # (BLOCK_G, BLOCK_N)
                ok = g_ok[:, None] & (sp < NS)[None, :]
                # .cg: from L2, where the other programs' stores are, never a stale L1 line
                m_s = tl.load(m_ptr + parts, mask=ok, other=float("-inf"), cache_modifier=".cg")
                l_s = tl.load(l_ptr + parts, mask=ok, other=0.0, cache_modifier=".cg")
                a_s = tl.load(acc_ptr + parts[:, :, None] * Dh + d[None, None, :],
                              mask=ok[:, :, None] & d_ok[None, None, :], other=0.0, cache_modifier=".cg")
                out = _merge(m_s, l_s, a_s, 1)
                tl.store(o_ptr + b * stride_ob + h[:, None] * stride_oh + d[None, :],
                         out.to(o_ptr.dtype.element_ty), mask=gd_ok)
                tl.atomic_xchg(cnt_ptr + b * KVH + kvh, 0, sem="relaxed", scope="gpu")  # ready for the next call
    else:
        out = tl.where(l_i[:, None] > 0, acc / tl.maximum(l_i, 1e-30)[:, None], 0.0)  # an empty row gives zeros
        tl.store(o_ptr + b * stride_ob + h[:, None] * stride_oh + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=gd_ok)


@triton.jit
def _chunk(n, split, NS, SPLIT: tl.constexpr, BLOCK_S: tl.constexpr):
    """Split ``split``'s chunk of a row of length n, slots lo .. hi - 1: whole BLOCK_S blocks, so every loop step
    has a valid slot (hi <= lo: an empty chunk, the loop does not run); the whole row without splits. (n is loaded
    by the caller: torch.compile's analysis of what a kernel writes counts a called function's pointer arguments
    as written where a store's address derives from its result.)"""
    lo = n * 0  # n's type, as the split branch gives it (Triton wants one type for both)
    hi = n
    if SPLIT:
        chunk = tl.cdiv(tl.cdiv(n, NS), BLOCK_S) * BLOCK_S
        lo = split * chunk
        hi = tl.minimum(n, lo + chunk)
    return lo, hi


@triton.jit
def _angles(cos_ptr, sin_ptr, b, n, stride_cb, d, d_ok, ROPE_AT_POS: tl.constexpr):
    """Row b's RoPE cos and sin (BLOCK_D,) in fp32: its row of (B, Dh) angles, or ``ROPE_AT_POS``, the (P, Dh)
    tables' row at its new slot n - 1."""
    row = tl.maximum(n - 1, 0).to(tl.int64) if ROPE_AT_POS else b
    cos = tl.load(cos_ptr + row * stride_cb + d, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + row * stride_cb + d, mask=d_ok, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _kv_block(k_ptr, v_ptr, table_ptr, b, kvh, s, hi, d, d_ok, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh,
              stride_vs, stride_tb, PAGED: tl.constexpr, PAGE: tl.constexpr):
    """The cached keys and values (BLOCK_S, BLOCK_D) of row b's slots ``s`` below ``hi`` (zeros past it)."""
    s_ok = s < hi
    if PAGED:
        blk = tl.load(table_ptr + b * stride_tb + s // PAGE, mask=s_ok, other=0).to(tl.int64)
        slot = blk * PAGE + s % PAGE
        k_off = slot * stride_ks + kvh * stride_kh
        v_off = slot * stride_vs + kvh * stride_vh
    else:
        k_off = b * stride_kb + kvh * stride_kh + s.to(tl.int64) * stride_ks
        v_off = b * stride_vb + kvh * stride_vh + s.to(tl.int64) * stride_vs
    kv_ok = s_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=kv_ok, other=0.0)
    return k, v


@triton.jit
def _block(q, k, v, s, hi, n, kn, vn, m_i, l_i, acc, scale, NEW: tl.constexpr, DOT: tl.constexpr):
    """One online-softmax step of q (BLOCK_G, BLOCK_D) over the keys and values of slots ``s`` (at least one below
    ``hi``): the running max, sum and unnormalised output after it."""
    if NEW:  # slot n - 1 may still hold stale contents (its write races with the block's read): use kn, vn
        k = tl.where((s == n - 1)[:, None], kn[None, :], k)
        v = tl.where((s == n - 1)[:, None], vn[None, :], v)
    # (BLOCK_G, BLOCK_S) fp32; inductor's launcher passes a Python float as fp64
    scores = (_dot(q, tl.trans(k), DOT) * scale).to(tl.float32)
    scores = tl.where((s < hi)[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    p = tl.exp(scores - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    # p stays fp32 (tf32 on tensor cores, 10 mantissa bits, not bf16's 7): the FLOPs are free in a decode step
    acc = acc * alpha[:, None] + _dot(p, v.to(tl.float32), 1 if DOT == 1 else 0)
    return m_new, l_i, acc


@triton.jit
def _combine(acc_ptr, m_ptr, l_ptr, o_ptr, stride_ob, stride_oh, H, NS, Dh,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    sp_ok, d_ok = sp < NS, d < Dh
    part = (b * H + h) * NS + sp  # (BLOCK_N,)
    m = tl.load(m_ptr + part, mask=sp_ok, other=float("-inf"))
    l_s = tl.load(l_ptr + part, mask=sp_ok, other=0.0)
    acc = tl.load(acc_ptr + part[:, None] * Dh + d[None, :], mask=sp_ok[:, None] & d_ok[None, :], other=0.0)
    out = _merge(m, l_s, acc, 0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _merge(m, l_s, acc, AXIS: tl.constexpr):
    """Splits' running max and sum ``m``, ``l_s`` (..., NS) and unnormalised outputs ``acc`` (..., NS, Dh), the
    splits on ``AXIS`` (the last of m's), -> the normalised output (..., Dh)."""
    m_max = tl.max(m, AXIS)
    # every split empty (a row of length 0): m_max = -inf, and exp(-inf - -inf) would be NaN; 0 gives weights 0
    w = tl.exp(m - tl.expand_dims(tl.where(m_max > float("-inf"), m_max, 0.0), AXIS))  # 0 for empty splits
    den = tl.sum(w * l_s, AXIS)
    num = tl.sum(tl.expand_dims(w, AXIS + 1) * acc, AXIS)  # (..., BLOCK_D)
    den = tl.expand_dims(den, AXIS)
    return tl.where(den > 0, num / tl.maximum(den, 1e-30), 0.0)  # an empty row gives zeros


def num_splits(B: int, KVH: int, capacity: int, sms: int) -> int:
    """Programs per (row, KV head) over the slots: about two programs per SM in all, at most one per
    ``MIN_BLOCK_S`` slots of a row's ``capacity`` and at most ``MAX_SPLITS``; 1 (no split) once ``B * KVH`` alone
    fills the GPU."""
    return max(1, min(_most_splits(capacity), 2 * sms // (B * KVH)))


def _most_splits(capacity: int) -> int:
    """One split per ``MIN_BLOCK_S`` slots of the capacity, at most ``MAX_SPLITS``."""
    return min(triton.cdiv(capacity, MIN_BLOCK_S), MAX_SPLITS)


def splits(B: int, KVH: int, capacity: int, sms: int) -> int:
    """The split count a call uses: :func:`num_splits`, or ``$LMSTACK_DECODE_SPLITS`` where set (a count of at least
    1, held to one split per ``MIN_BLOCK_S`` slots of the capacity and to ``MAX_SPLITS``, as num_splits is)."""
    raw = os.environ.get(SPLITS_ENV, "")
    if not raw:
        return num_splits(B, KVH, capacity, sms)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(SPLITS_ENV, f"expected a split count of at least 1, got {raw!r}")
    return max(1, min(int(raw), _most_splits(capacity)))


def block_s(capacity: int, ns: int) -> int:
    """Key slots a loop step for ``ns`` splits of a ``capacity``-slot row: the power of two that holds a full row's
    chunk, between ``MIN_BLOCK_S`` and ``BLOCK_S`` (a batch-1 step's short chunks get one small block each, long
    rows BLOCK_S blocks)."""
    return min(BLOCK_S, max(MIN_BLOCK_S, triton.next_power_of_2(triton.cdiv(max(capacity, 1), ns))))


def decode_attention(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                     block_table: torch.Tensor | None = None, block_size: int | None = None,
                     scale: float | None = None, k_new: torch.Tensor | None = None,
                     v_new: torch.Tensor | None = None, cos_BDh: torch.Tensor | None = None,
                     sin_BDh: torch.Tensor | None = None, split_counters: torch.Tensor | None = None,
                     pdl: bool = False, cos_PDh: torch.Tensor | None = None,
                     sin_PDh: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, Dh) queries against per-row (B, KVH, L, Dh) buffers, or a (slots, KVH, Dh) pool with ``block_table``
    (B, NB) and ``block_size``; ``lens_B`` valid slots per row. Returns (B, H, Dh) in q's dtype. ``k_new``/``v_new``
    (B, KVH, Dh) and ``cos_BDh``/``sin_BDh`` (B, Dh): the step's new token, rotated and written to slot
    ``lens_B - 1`` here (:func:`kernel.reference.decode_attention`); or ``cos_PDh``/``sin_PDh`` (P, Dh) tables read
    at that slot by the kernel itself. ``split_counters``: a zeroed int32 buffer of
    at least B x KVH entries on q's device, left zeroed; with it the slot splits combine in the attention kernel
    itself (no second kernel). Calls that share one buffer must not run concurrently (one stream, as a model's
    layers do); the caches keep one under ``$LMSTACK_SPLIT_COMBINE=last``
    (:func:`kernel.reference.split_combine_in_kernel`). ``pdl``: launch both kernels with programmatic dependent
    launch where the device has it (sm90+): each waits for the kernel before it, then lets the next one start (a
    PDL-launched matmul after it loads its first weights meanwhile); with the new token and a fixed cache the split
    kernel loads a block of cached keys and values before its wait (:func:`decode_attention_pdl`)."""
    return _launch(q_BHDh, k, v, lens_B, block_table, block_size, scale, k_new, v_new, cos_BDh, sin_BDh,
                   split_counters, pdl, cos_PDh, sin_PDh)[0]


def _launch(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor,
            block_table: torch.Tensor | None, block_size: int | None, scale: float | None,
            k_new: torch.Tensor | None, v_new: torch.Tensor | None, cos_BDh: torch.Tensor | None,
            sin_BDh: torch.Tensor | None, split_counters: torch.Tensor | None, pdl: bool,
            cos_PDh: torch.Tensor | None, sin_PDh: torch.Tensor | None, ws: torch.Tensor | None = None,
            layer: int = 0, combine_kernel: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """:func:`decode_attention`'s kernels: (out, the splits' outputs, maxes and sums, the split count). ``ws``
    (layers, B, W) fp32, with ``layer``: the unified-shift accumulators (:func:`decode_attention_unified`): the
    splits add to ``ws[layer]``, zero ``ws[(layer + 1) % layers]``, and no combine runs (out is left unwritten).
    ``combine_kernel`` False: the splits' partials only, no combine kernel (out unwritten where there are two or
    more splits), for a consumer that combines them itself (``benchmarks/bench_unified_attention.py``)."""
    B, H, KVH, Dh = check_decode_inputs(q_BHDh, k, v, lens_B, block_table, block_size)
    check_split_counters("decode_attention", split_counters, B * KVH, "B x KVH", q_BHDh.device)
    check_rope_tables(q_BHDh, k, block_table, block_size, cos_BDh, cos_PDh, sin_PDh)
    at_pos = cos_PDh is not None
    new = k_new is not None or cos_BDh is not None or at_pos
    if new:
        check_new_token(q_BHDh, k, k_new, v_new, cos_BDh, sin_BDh)
        kn = k_new if k_new.stride(-1) == 1 else k_new.contiguous()
        vn = v_new if v_new.stride(-1) == 1 else v_new.contiguous()
        knb, knh, vnb, vnh = kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1)
    else:
        kn = vn = q_BHDh  # unused
        knb = knh = vnb = vnh = 0
    rope = cos_BDh is not None or at_pos
    if rope:
        if Dh % 2:
            raise ShapeError(f"decode_attention: RoPE needs an even head dim, got {Dh}")
        # (B, Dh), a (1, Dh) row expanded over B (stride 0), or (P, Dh) tables read at each row's position
        cos, sin = (cos_PDh, sin_PDh) if at_pos else (cos_BDh, sin_BDh)
        if cos.stride(-1) != 1 or sin.stride(-1) != 1 or cos.stride(0) != sin.stride(0):
            cos, sin = cos.contiguous(), sin.contiguous()
        cb = cos.stride(0)
    else:
        cos = sin = q_BHDh  # unused
        cb = 0
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
        capacity = table.shape[1] * block_size
    else:
        table = None  # unused: a spare pointer below
        kb, kh, ks, vb, vh, vs, tb = k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), 0
        capacity = k.shape[2]
    # from shapes only, never from lens_B: a captured CUDA graph replays the same grid at any length
    ns = splits(B, KVH, capacity, device_info(q)[0])  # a pretend 8-SM GPU off CUDA: the interpreter splits
    split = ns > 1 or ws is not None  # unified: one split, at least, writing its partials
    if split:
        acc = torch.empty(B, H, ns, Dh, dtype=torch.float32, device=q.device)
        m = torch.empty(B, H, ns, dtype=torch.float32, device=q.device)
        l_s = torch.empty(B, H, ns, dtype=torch.float32, device=q.device)
    else:
        acc = m = l_s = out  # unused
    unified = ws is not None
    if unified:
        check_unified(ws, layer, B, H, Dh, new and not paged, q_BHDh.device)
    combine = ns > 1 and split_counters is not None and not unified
    pdl = pdl and pdl_capable(q)
    launch = {"launch_pdl": True} if pdl else {}
    block_d = max(16, triton.next_power_of_2(Dh))
    early = new and not paged and (pdl or EARLY_WITHOUT_PDL)
    # unused pointer arguments get a spare buffer, never lens_B: passed as three arguments, lens_B was copied three
    # times per layer by the code torch 2.11's inductor generated for a decode step (run Z, docs/benchmarks.md)
    spare = None if paged and combine else torch.empty(1, dtype=torch.int32, device=q.device)
    _decode[(B, KVH, ns)](q, k, v, lens_B, table if paged else spare, out, acc, m, l_s, kn, vn, cos, sin,
                          split_counters if combine else spare, q.stride(0), q.stride(1), kb,
                          kh, ks, vb, vh, vs, tb, out.stride(0), out.stride(1), knb, knh, vnb, vnh, cb,
                          Dh ** -0.5 if scale is None else scale, G, Dh, H, ns, KVH, 0 if paged else capacity,
                          ws[layer] if unified else acc, ws[(layer + 1) % ws.shape[0]] if unified else acc,
                          ws.shape[-1] if unified else 0,
                          PAGED=paged, PAGE=block_size or 1, DOT=_dot_mode(q.dtype), SPLIT=split, NEW=new,
                          ROPE=rope, COMBINE=combine, BLOCK_G=max(16, triton.next_power_of_2(G)),
                          BLOCK_S=block_s(capacity, ns),
                          BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(ns), PDL=pdl_mode(pdl), EARLY=early,
                          ROPE_AT_POS=at_pos, UNIFIED=unified_mode(Dh == block_d) if unified else 0, **launch)
    if ns > 1 and not combine and not unified and combine_kernel:
        _combine[(B, H)](acc, m, l_s, out, out.stride(0), out.stride(1), H, ns, Dh,
                         BLOCK_N=triton.next_power_of_2(ns), BLOCK_D=block_d, PDL=pdl_mode(pdl), **launch)
    return out, acc, m, l_s, ns


def decode_attention_unified(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                             ws: torch.Tensor, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
                             scale: float | None = None, cos_BDh: torch.Tensor | None = None,
                             sin_BDh: torch.Tensor | None = None, cos_PDh: torch.Tensor | None = None,
                             sin_PDh: torch.Tensor | None = None, pdl: bool = False) -> UnifiedParts:
    """:func:`decode_attention` over a fixed cache with the step's new token, without the second kernel that
    combines the slot splits: each split adds its share, against a shift common to the head's splits, to the
    accumulators ``ws[layer]`` (``decode_unified.unified_workspace``), and the output projection divides them as it
    reads them (``kernel.triton.gemv``'s ``att``; :func:`kernel.reference.unified_output` is the same in torch ops).
    Each call zeroes ``ws[(layer + 1) % layers]`` for that layer's next use, so the layers must run in order every
    step, each with its own slot; a fresh or reset workspace is all zeros. The summation order of the atomics varies
    from run to run (the last bits of the fp32 sums). ``pdl``: as :func:`decode_attention` (one kernel).
    Returns :class:`kernel.reference.UnifiedParts` (``ws[layer]``, the splits' partials, q's dtype)."""
    _, acc, m, l_s, _ = _launch(q_BHDh, k, v, lens_B, None, None, scale, k_new, v_new, cos_BDh, sin_BDh, None, pdl,
                                cos_PDh, sin_PDh, ws=ws, layer=layer)
    return UnifiedParts(ws[layer], acc, m, l_s, q_BHDh.dtype)


def decode_attention_unified_op(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                                ws: torch.Tensor, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
                                scale: float | None = None, cos_BDh: torch.Tensor | None = None,
                                sin_BDh: torch.Tensor | None = None, cos_PDh: torch.Tensor | None = None,
                                sin_PDh: torch.Tensor | None = None, pdl: bool = False) -> UnifiedParts:
    """:func:`decode_attention_unified` as an opaque op to torch.compile
    (``torch.ops.lmstack.decode_attention_unified``, declared to write k, v and ``ws``), so a compiled decode step
    neither traces the kernel (inductor would have to analyse its atomics) nor loses its PDL launch: the registry's
    ``decode_attention_unified`` op as ``triton`` (``pdl`` False) and ``triton_pdl``
    (:func:`decode_attention_unified_pdl`)."""
    acc, m, l_s = torch.ops.lmstack.decode_attention_unified(q_BHDh, k, v, lens_B, ws, layer, k_new, v_new, scale,
                                                             cos_BDh, sin_BDh, cos_PDh, sin_PDh, pdl)
    return UnifiedParts(ws[layer], acc, m, l_s, q_BHDh.dtype)


def decode_attention_unified_pdl(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                                 ws: torch.Tensor, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
                                 scale: float | None = None, cos_BDh: torch.Tensor | None = None,
                                 sin_BDh: torch.Tensor | None = None, cos_PDh: torch.Tensor | None = None,
                                 sin_PDh: torch.Tensor | None = None) -> UnifiedParts:
    """:func:`decode_attention_unified_op` launched with programmatic dependent launch (sm90+), as
    :func:`decode_attention_pdl` is: it loads its first block of cached keys and values before it waits for the
    q/k/v projection."""
    return decode_attention_unified_op(q_BHDh, k, v, lens_B, ws=ws, layer=layer, k_new=k_new, v_new=v_new,
                                       scale=scale, cos_BDh=cos_BDh, sin_BDh=sin_BDh, cos_PDh=cos_PDh,
                                       sin_PDh=sin_PDh, pdl=True)


@torch.library.custom_op("lmstack::decode_attention_unified", mutates_args=("k", "v", "ws"))
def _decode_attention_unified(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor,
                              ws: torch.Tensor, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
                              scale: float | None, cos: torch.Tensor | None, sin: torch.Tensor | None,
                              cos_table: torch.Tensor | None, sin_table: torch.Tensor | None,
                              pdl: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = decode_attention_unified(q, k, v, lens, ws=ws, layer=layer, k_new=k_new, v_new=v_new, scale=scale,
                                     cos_BDh=cos, sin_BDh=sin, cos_PDh=cos_table, sin_PDh=sin_table, pdl=pdl)
    return parts.acc, parts.m, parts.l


@_decode_attention_unified.register_fake
def _decode_attention_unified_shape(q, k, v, lens, ws, layer, k_new, v_new, scale, cos, sin, cos_table, sin_table,
                                    pdl):
    B, H, Dh = q.shape
    ns = splits(B, k.shape[1], k.shape[2], device_info(q)[0])
    return (q.new_empty((B, H, ns, Dh), dtype=torch.float32), q.new_empty((B, H, ns), dtype=torch.float32),
            q.new_empty((B, H, ns), dtype=torch.float32))


def decode_attention_pdl(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                         block_table: torch.Tensor | None = None, block_size: int | None = None,
                         scale: float | None = None, k_new: torch.Tensor | None = None,
                         v_new: torch.Tensor | None = None, cos_BDh: torch.Tensor | None = None,
                         sin_BDh: torch.Tensor | None = None, split_counters: torch.Tensor | None = None,
                         cos_PDh: torch.Tensor | None = None, sin_PDh: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`decode_attention` launched with programmatic dependent launch (sm90+), as an opaque op to
    torch.compile (``torch.ops.lmstack.decode_attention_pdl``, declared to write k, v and ``split_counters``: the
    step's token goes to the cache), since inductor launches the Triton kernels it traces without the attribute. In
    a decode step of PDL-chained matmuls (``kernel.triton.gemv``) the chain then runs through attention too. Given
    the step's new token and a fixed cache, each split program loads one block of cached keys and values (a guess
    at its chunk's first, read again once the row's length says otherwise) before it waits for the kernel before
    it, which must therefore not write the cache (in a decode step it is the q/k/v projection); everything else,
    the row lengths included, is read after the wait."""
    return torch.ops.lmstack.decode_attention_pdl(q_BHDh, k, v, lens_B, block_table, block_size, scale, k_new, v_new,
                                                  cos_BDh, sin_BDh, cos_PDh, sin_PDh, split_counters)


@torch.library.custom_op("lmstack::decode_attention_pdl", mutates_args=("k", "v", "split_counters"))
def _decode_attention_pdl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor,
                          block_table: torch.Tensor | None, block_size: int | None, scale: float | None,
                          k_new: torch.Tensor | None, v_new: torch.Tensor | None, cos: torch.Tensor | None,
                          sin: torch.Tensor | None, cos_table: torch.Tensor | None,
                          sin_table: torch.Tensor | None, split_counters: torch.Tensor | None) -> torch.Tensor:
    return decode_attention(q, k, v, lens, block_table=block_table, block_size=block_size, scale=scale, k_new=k_new,
                            v_new=v_new, cos_BDh=cos, sin_BDh=sin, pdl=True, cos_PDh=cos_table, sin_PDh=sin_table,
                            split_counters=split_counters)


@_decode_attention_pdl.register_fake
def _decode_attention_pdl_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor,
                                block_table: torch.Tensor | None, block_size: int | None, scale: float | None,
                                k_new: torch.Tensor | None, v_new: torch.Tensor | None, cos: torch.Tensor | None,
                                sin: torch.Tensor | None, cos_table: torch.Tensor | None,
                                sin_table: torch.Tensor | None, split_counters: torch.Tensor | None) -> torch.Tensor:
    return torch.empty_like(q)
