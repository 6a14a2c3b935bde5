"""The decode gemv (:mod:`kernel.triton.gemv`) written in Gluon, Triton's layout-explicit language (sm90+, opt-in by
``$LMSTACK_GEMV_IMPL=gluon``; measured slower than the Triton kernel in decode, so not the default).

Same design, tiles, epilogues and PDL placement as the Triton kernel: a program owns ROWS output rows and loads a
(ROWS, BLOCK_K) weight block a K step into registers, its first block (and its rows' scales and bias) before the PDL
wait, the rest of K in a loop; the block is laid out as Triton lays out the Triton kernel's (:func:`layout`: warps
along K first, so a thread holds several rows of the same columns). One difference, which Triton's layout choice
does not allow: for int8 weights in 16-byte vectors the Triton kernel's sm90 code moves each step's x into the
block's column slice through shared memory with four CTA-wide barriers a step (docs/benchmarks.md, session 18;
since kernel 0.20 it loads one-step rows 8 bytes a vector instead, in x's own layout: ``kernel.triton.gemv._wvec``);
here that x goes into shared memory once, after the wait, with one barrier, and the K loop has none. Float
weights' x, which the Triton kernel needs no shuffle for, is loaded into the slice each step as there
(:func:`x_source`). x's RMS is summed across warps after the loop, as the Triton kernel does.

Measured on an H200 (docs/benchmarks.md, runs BQ-BX): the int8 gemvs alone, plain launches, are as fast as the
Triton kernel's or within a few percent; in batch-1 decode of the 1.1B shape int8 ran 1,958 tokens/s against 2,006
(its gate/up faster, its q/k/v slower) and bf16 1,408 against 1,428 (BT, BU; again in BV: 1,956-1,957 against
2,001-2,005 and 1,408-1,409 against 1,430-1,431), and tiles tuned on this kernel did not close the gap (BX).

Weights: int8 with bf16 activations (the Triton kernel's default ``f16`` path: int8 to fp16 exactly by the same
inline PTX, products and per-step sums in fp16 with x scaled by 2^-7), or float weights (fp32 products). A fused
gate/up weight (``glu``) is read as two row blocks a program, gate rows ``j`` and up rows ``j + N / 2``, rather than
interleaved, and the epilogue stores ``silu(gate) * up``. Scales and bias are always loaded with the first weight
block (``$LMSTACK_GEMV_CONSTS`` is the Triton kernel's). :func:`supports` says which calls this kernel takes; the
rest stay with the Triton kernel.
"""

from __future__ import annotations

import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernel.triton.gemv import F16_X_SCALE as X_SCALE  # x's scale before its fp16 products
from kernel.triton.gemv import I8_F16_PTX
from specs.errors import ConfigError

X_ENV = "LMSTACK_GEMV_GLUON_X"


def x_source(int8: bool) -> str:
    """``$LMSTACK_GEMV_GLUON_X``: where the K loop reads x, "smem" (x staged in shared memory once, after the PDL
    wait, a BLOCK_K row a step, then one barrier) or "global" (each step's slice straight from global memory);
    "auto", the default: "smem" for int8 weights and "global" for float weights, each dtype's faster in decode on an
    H200 (runs BT-BU: int8 1,958 tokens/s staged against 1,896; bf16 1,408 from global memory against 1,302)."""
    raw = os.environ.get(X_ENV, "auto")
    if raw not in ("auto", "smem", "global"):
        raise ConfigError(X_ENV, f"expected 'auto' (the default), 'smem' or 'global', got {raw!r}")
    if raw == "auto":
        return "smem" if int8 else "global"
    return raw


# a CTA-wide barrier: gl.thread_barrier up to Triton 3.6, gl.barrier after
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def _i8_to_f16(w):
    """int8 -> fp16 exactly, four a 32-bit word (the Triton kernel's PTX, :data:`kernel.triton.gemv.I8_F16_PTX`)."""
    return gl.inline_asm_elementwise(asm=I8_F16_PTX, constraints="=r,=r,r", args=[w], dtype=gl.float16, is_pure=True,
                                     pack=4)


@gluon.jit
def _mac(acc, w, x, I8: gl.constexpr, X_SCALED: gl.constexpr):
    """acc + w * x (x: the block's column slice): int8 to fp16 exactly, products and sums in fp16 with x scaled by
    2^-7 (``X_SCALED``: already, as staged in shared memory), or float weights in fp32."""
    if I8:
        if X_SCALED:
            xh = x
        else:
            xh = (x.to(gl.float32) * X_SCALE).to(gl.float16)
        acc = acc + _i8_to_f16(w) * gl.expand_dims(xh, 0)
    else:
        acc = acc + w.to(gl.float32) * gl.expand_dims(x.to(gl.float32), 0)
    return acc


@gluon.jit
def _gemv_gluon(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, N, K, stride_wn, rms_eps,
                HAS_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr, RMS: gl.constexpr, HAS_RES: gl.constexpr,
                GLU: gl.constexpr, ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                PDL: gl.constexpr, I8: gl.constexpr, VEC: gl.constexpr, TK: gl.constexpr, WR: gl.constexpr,
                WK: gl.constexpr, K_P2: gl.constexpr, S_P2: gl.constexpr, X_SMEM: gl.constexpr):
    # (rows, columns): VEC elements (16 bytes) a thread, TK threads along K, WR warps along the rows, WK along K
    # (:func:`layout`)
    l2: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // TK, TK], [WR, WK], [1, 0])
    lr: gl.constexpr = gl.SliceLayout(1, l2)
    lk: gl.constexpr = gl.SliceLayout(0, l2)
    R: gl.constexpr = ROWS // 2 if GLU else ROWS  # outputs a program
    j = gl.program_id(0) * R + gl.arange(0, R, layout=lr)
    j_ok = j < (N // 2 if GLU else N)
    kk = gl.arange(0, BLOCK_K, layout=lk)
    rows = w_ptr + gl.expand_dims(j.to(gl.int64) * stride_wn, 1)
    rows_up = w_ptr + gl.expand_dims((j + N // 2).to(gl.int64) * stride_wn, 1)  # GLU: the up rows
    # the first weight block(s), scales and bias before the wait: nothing the kernel before writes
    first = gl.expand_dims(j_ok, 1) & gl.expand_dims(kk < K, 0)
    w = gl.load(rows + gl.expand_dims(kk, 0), mask=first, other=0)
    if GLU:
        wu = gl.load(rows_up + gl.expand_dims(kk, 0), mask=first, other=0)
    sc = gl.full([R], 1.0, gl.float32, lr)
    sc_up = sc
    bi = gl.zeros([R], gl.float32, lr)
    bi_up = bi
    if HAS_SCALE:
        sc = gl.load(scale_ptr + j, mask=j_ok, other=0.0).to(gl.float32)
        if GLU:
            sc_up = gl.load(scale_ptr + N // 2 + j, mask=j_ok, other=0.0).to(gl.float32)
    if HAS_BIAS:
        bi = gl.load(bias_ptr + j, mask=j_ok, other=0.0).to(gl.float32)
        if GLU:
            bi_up = gl.load(bias_ptr + N // 2 + j, mask=j_ok, other=0.0).to(gl.float32)
    if PDL == 2:  # early: the next kernel may launch before this one waits
        gdc_launch_dependents()
    if PDL:
        gdc_wait()
    if PDL == 1:
        gdc_launch_dependents()
    res = gl.zeros([R], gl.float32, lr)
    if HAS_RES and not GLU:
        res = gl.load(res_ptr + j, mask=j_ok, other=0.0).to(gl.float32)
    if X_SMEM:  # x into shared memory once, a (BLOCK_K,) row a step, then one barrier
        l1: gl.constexpr = gl.BlockedLayout([8], [32], [WR * WK], [0])
        kx = gl.arange(0, BLOCK_K, layout=l1)
        xs = gl.allocate_shared_memory(gl.float16 if I8 else x_ptr.dtype.element_ty, [S_P2, BLOCK_K],
                                       gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ss = gl.zeros([BLOCK_K], gl.float32, l1)
        for s in gl.static_range(S_P2):
            xa = gl.load(x_ptr + s * BLOCK_K + kx, mask=s * BLOCK_K + kx < K, other=0.0)
            if RMS:
                ss += xa.to(gl.float32) * xa.to(gl.float32)
            if I8:  # scaled and in fp16 once, not every step
                xs.index(s).store((xa.to(gl.float32) * X_SCALE).to(gl.float16))
            else:
                xs.index(s).store(xa)
        _cta_barrier()
        x = xs.index(0).load(lk)
    else:
        x = gl.load(x_ptr + kk, mask=kk < K, other=0.0)
    acc_t: gl.constexpr = gl.float16 if I8 else gl.float32
    acc = _mac(gl.zeros([R, BLOCK_K], acc_t, l2), w, x, I8, X_SMEM)
    acc_up = gl.zeros([R, BLOCK_K], acc_t, l2)
    if GLU:
        acc_up = _mac(acc_up, wu, x, I8, X_SMEM)
    for k0 in range(BLOCK_K, K, BLOCK_K):  # the rest of K: a loop, as the Triton kernel's (not unrolled)
        k = k0 + kk
        m = gl.expand_dims(j_ok, 1) & gl.expand_dims(k < K, 0)
        w = gl.load(rows + gl.expand_dims(k, 0), mask=m, other=0)
        if GLU:
            wu = gl.load(rows_up + gl.expand_dims(k, 0), mask=m, other=0)
        if X_SMEM:  # this step's x from shared memory, in the block's column slice
            x = xs.index(k0 // BLOCK_K).load(lk)
        else:  # straight from global memory into the block's column slice
            x = gl.load(x_ptr + k, mask=k < K, other=0.0)
        acc = _mac(acc, w, x, I8, X_SMEM)
        if GLU:
            acc_up = _mac(acc_up, wu, x, I8, X_SMEM)
    # x's RMS only now: its cross-warp sum (shared memory, two barriers) after the weights', as the Triton kernel's
    if RMS:
        if X_SMEM:  # the sums of squares kept from staging x
            rstd = gl.rsqrt(gl.sum(ss, axis=0) / K + rms_eps)
        else:  # from one load of all of x, spread over the threads
            l1g: gl.constexpr = gl.BlockedLayout([K_P2 // (32 * (WR * WK)) if K_P2 >= 32 * WR * WK else 1], [32],
                                                 [WR * WK], [0])
            kg = gl.arange(0, K_P2, layout=l1g)
            xg = gl.load(x_ptr + kg, mask=kg < K, other=0.0).to(gl.float32)
            rstd = gl.rsqrt(gl.sum(xg * xg, axis=0) / K + rms_eps)
    if I8:
        y = gl.sum(acc.to(gl.float32), axis=1) * (1.0 / X_SCALE)
    else:
        y = gl.sum(acc, axis=1)
    if RMS:  # RMSNorm of x without its weight (folded into w): (x * rstd) @ w.T = rstd * (x @ w.T)
        y = y * rstd
    y = y * sc + bi
    if GLU:  # silu(gate) * up, each projection rounded to the output dtype first (as stored)
        if I8:
            u = gl.sum(acc_up.to(gl.float32), axis=1) * (1.0 / X_SCALE)
        else:
            u = gl.sum(acc_up, axis=1)
        if RMS:
            u = u * rstd
        u = u * sc_up + bi_up
        gate = y.to(out_ptr.dtype.element_ty).to(gl.float32)
        up = u.to(out_ptr.dtype.element_ty).to(gl.float32)
        y = gate * (1.0 / (1.0 + gl.exp(-gate))) * up
    elif HAS_RES:
        y = y + res
    gl.store(out_ptr + j, y.to(out_ptr.dtype.element_ty), mask=j_ok)


# the most shared memory x may take staged (``$LMSTACK_GEMV_GLUON_X=smem``); past it the Triton kernel takes the call
X_STAGE_LIMIT = 64 * 1024


def x_stage_bytes(K: int, block_k: int, x_dtype: torch.dtype, int8: bool) -> int:
    """Shared memory the staged x takes: the K steps rounded up to a power of two, a BLOCK_K row each, in fp16 for
    int8 weights, else in x's dtype."""
    rows = triton.next_power_of_2(triton.cdiv(K, block_k))
    return rows * block_k * (2 if int8 else x_dtype.itemsize)


def supports(x: torch.Tensor, w: torch.Tensor, int8_f16: int, persistent: bool, block_k: int) -> bool:
    """Whether this kernel takes the call: on a CUDA device of sm90+, not persistent, int8 weights on the fp16 path
    (``int8_f16``, :func:`kernel.triton.gemv._i8_f16`, 2: the inline PTX) or float weights of x's dtype, and, with x
    staged in shared memory, its stage (``block_k`` columns a K step) within :data:`X_STAGE_LIMIT`."""
    if not x.is_cuda or persistent or torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    if x_source(w.dtype == torch.int8) == "smem" and \
            x_stage_bytes(w.shape[1], block_k, x.dtype, w.dtype == torch.int8) > X_STAGE_LIMIT:
        return False
    return int8_f16 == 2 if w.dtype == torch.int8 else w.dtype == x.dtype


def layout(block_k: int, warps: int, int8: bool) -> tuple[int, int, int, int]:
    """(VEC, TK, WR, WK) for a weight block of ``block_k`` columns in ``warps`` warps, as Triton lays out the Triton
    kernel's: VEC elements (16 bytes) a thread, TK threads along K (up to 32, the rest of a warp along the rows),
    then WK warps along K as far as BLOCK_K goes and WR along the rows (whatever their number), so a thread holds
    several rows of the same columns and each x value it loads serves all of them."""
    vec = 16 if int8 else 8
    tk = min(32, max(1, block_k // vec))
    wk = min(warps, max(1, block_k // (vec * tk)))
    return vec, tk, warps // wk, wk


def gemv_gluon(x, w, out, scale, bias, res, N: int, K: int, rms_eps, *, rows: int, block_k: int, warps: int,
               pdl_mode: int, glu: bool, launch_pdl: bool) -> None:
    """Launch :func:`_gemv_gluon` as :func:`kernel.triton.gemv.gemv` launches its Triton kernel (its arguments
    already checked there)."""
    int8 = w.dtype == torch.int8
    vec, tk, wr, wk = layout(block_k, warps, int8)
    r = rows // 2 if glu else rows
    steps = triton.cdiv(K, block_k)
    x_smem = x_source(int8) == "smem"
    _gemv_gluon[(triton.cdiv(N // 2 if glu else N, r),)](
        x, w, out, scale if scale is not None else x, bias if bias is not None else x, res if res is not None else x,
        N, K, w.stride(0), float(rms_eps or 0.0), HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        RMS=rms_eps is not None, HAS_RES=res is not None, GLU=glu, ROWS=rows, BLOCK_K=block_k,
        PDL=pdl_mode, I8=int8, VEC=vec, TK=tk, WR=wr, WK=wk,
        K_P2=triton.next_power_of_2(K) if rms_eps is not None and not x_smem else 1,
        S_P2=triton.next_power_of_2(steps) if x_smem else 1, X_SMEM=x_smem, num_warps=warps,
        **({"launch_pdl": True} if launch_pdl else {}))
