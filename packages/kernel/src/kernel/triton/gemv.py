"""One activation row times a weight matrix in Triton, ``y = x @ w.T``: every weight byte in flight at once.

A batch-1 decode step's small matmuls (q/k/v 10.5 MB, o 8.4 MB at the 1.1B shape) take ~6 us in the skinny
matmul (``kernel.triton.skinny``) where the bytes alone would take ~2.4 us at the copy bandwidth: its ``tl.dot``
tiles pad the one row to 16, run one program of four warps per SM on ~80 of 132 SMs, and stall on the pipeline's
fixed latencies (Nsight Compute, docs/benchmarks.md). Here there is no tensor core and no pipeline: each program
owns ``ROWS`` output columns and loads a ``(ROWS, BLOCK_K)`` weight block per step with plain 16-byte loads (all
of a block's loads are issued before its products need them), multiplies by x in fp32 and reduces at the end.
Enough small programs are launched that every SM holds several, so the bytes in flight per SM come from
occupancy instead of a software pipeline. Int8 weights cross the bus as one byte each, their per-channel scale
applied to the fp32 sum (``$LMSTACK_GEMV_INT8``: by default converted to fp16 two at a time and multiplied in
packed fp16, or with ``magic``/``cvt`` converted to fp32 one at a time). The epilogue is the skinny kernel's: a
folded RMSNorm's rstd (x's sum of squares, from the x values the loop loads anyway), scale, bias, residual, the
cast; for a fused gate/up weight (``glu``) each program takes gate and up rows in pairs and stores
``silu(gate) * up`` instead (no separate SwiGLU kernel).

Launched with programmatic dependent launch (``pdl``, sm90+), a program loads its first weight block before it waits
for the kernel before it (``griddepcontrol.wait``), so a chain of them streams weights while each predecessor
drains: a pure read of 10 MB took 6.3 us launched plainly and 2.7 us chained that way on an H200
(``benchmarks/bench_hbm_floor.py``). The weights must then not be written by the kernel just before (true of a
decode step's frozen weights); torch.compile reaches that launch only through the opaque op ``lmstack::gemv_pdl``.

One row only (batch-1 decode); the tiles (ROWS, BLOCK_K, num_warps, PDL) per weight shape come from a table
measured per card, ``gemv_tiles.json`` beside this module (``benchmarks/bench_decode_kernels.py --tune-gemv``:
an entry where gemv beat the skinny matmul, PDL 1 where the chained launch beat the plain one), or from
``$LMSTACK_GEMV_TILES``. Where a card's table has no entry the skinny matmul keeps the shape (and every shape with
``$LMSTACK_GEMV=0``). Semantics: :func:`kernel.reference.linear` and :func:`kernel.reference.int8_linear`.
``$LMSTACK_GEMV_IMPL=gluon`` runs the calls it can on the same design written in Gluon
(:mod:`kernel.triton.gemv_gluon`: int8 weights' x staged in shared memory once, no barrier in the K loop; opt-in,
measured slower in decode).

x takes the layout Triton gives its own load (16-byte vectors), and the weight block's column slice must match it
before the products. Float weights already do (8 two-byte values a vector each). Int8 weights come 16 a 16-byte
vector, so by default x moves into their layout through shared memory, behind CTA-wide barriers, at every K step.
Where one K step covers the whole row and a thread's share of x is a whole vector, int8 weights are loaded 8 bytes a
vector instead (``WVEC``, :func:`_wvec`): the block's column slice is then x's own layout, and x goes from its load
to the products with no shuffle (kernel 0.20: the q/k/v and o projections of the 1.1B int8 decode ~3 us a token
faster each, int8 at 2,037-2,038 tokens/s against 2,003-2,004 on an H200, bf16 unchanged, docs/benchmarks.md run CB;
the down projection's three K steps lost 16 us a token that way, run CA, so multi-step rows keep 16-byte vectors).

A K step's loads normally follow the products of the step before, so each step after the PDL wait is a memory round
trip. In a row of two steps the second step's weights are asked for right after the wait and its x with the first
step's (``HOIST``, :func:`_hoist`; kernel 0.21: the bf16 q/k/v and o projections of the 1.1B decode, bf16 decode at
1,405-1,406 tokens/s against 1,372-1,375 on an H200, docs/benchmarks.md run CE). Rows of three steps lost that way
(run CD: the down projection 20 us a token slower for int8 weights, 57 for bf16 ones, whose registers rose 78 -> 94).

With ``att`` (kernel 0.22) x is a unified-shift decode attention's fp32 accumulators
(``decode_attention.decode_attention_unified``): each output is divided by its head's sum as it is loaded, so no
kernel combines the attention's slot splits; a flagged row's partials are combined here instead (``ATT``,
:func:`_step_x`, :func:`_att_merge`). The weights are then loaded four values a vector, in the fp32 x's layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import triton
import triton.language as tl

from kernel.triton._device import device_info, pdl_capable
from kernel.triton._pdl import pdl_enter, pdl_mode
from kernel.triton._tables import load_table, tile_key
from specs.errors import ConfigError, ShapeError

TILES_ENV = "LMSTACK_GEMV_TILES"
SWITCH_ENV = "LMSTACK_GEMV"  # "0": never route to this kernel (the skinny matmul keeps every shape), for comparisons
# int8 weights: "f16" (the default: to fp16 two at a time, products and per-K-step sums in packed fp16,
# :func:`_weights_f16`, for bf16 activations, fp16/fp32 ones taking "magic"; int8 decode on an H200 at 1,707 tokens/s
# with its own tuned tiles against 1,579 for "magic" as shipped before, bf16 1,373, in the same call,
# docs/benchmarks.md run AL), "magic" (to fp32 by integer and float adds, exact: :func:`_weights`; 1,575 against
# 1,527 for "cvt" in run AF) or "cvt" (to fp32 by the quarter-rate conversion instruction)
INT8_ENV = "LMSTACK_GEMV_INT8"
INT8_MODES = ("f16", "magic", "cvt")
# "f16": x is scaled by 2^-7 before its fp16 products (y scaled back in fp32), so a weight (|q| <= 128) times x stays
# within x's own magnitude. Each element of the fp16 sum gains one product a K step, so it stays below fp16's 65,504
# while (K steps) x max|x| does: |x| up to ~8,000 at 8 steps (K 2,048 in blocks of 256), ~2,900 at 22. The other
# end: scaled x below fp16's smallest normal (6.1e-5, so |x| below ~0.008) keeps an absolute precision of ~8e-6, so
# activations whose typical magnitude is ~1e-3 come out ~0.2 of a bf16 ulp off (relative to the largest output), and
# ~1e-4 several ulps (greedy gaps of the random-weight 1.1B decode: 0.20 logits, "magic" 0.22, run AL)
F16_X_SCALE = tl.constexpr(2.0 ** -7)
# when a program loads its rows' int8 scales and bias, and the residual: "early" (the default: the scales and bias
# with the first weight block, before a PDL wait, the residual with x) or "late" (kernel 0.14's order: all three
# after the row sums, one more memory round trip at the end of every call that has one), for comparisons
CONSTS_ENV = "LMSTACK_GEMV_CONSTS"


def i8_f16_pairs_ptx(first: str, second: str) -> str:
    """PTX turning four int8 weights (one 32-bit word, $2) into two fp16 pairs ($0, $1), exactly: the sign bits
    flipped (q + 128), the bytes that ``first`` and ``second`` select (``prmt`` selectors: a byte of the word in
    each low nibble, 4 for the 0x64 exponent byte) permuted under 0x64 (the fp16 1024 + q + 128), 1152 subtracted
    from each pair."""
    return f"""{{
    .reg .b32 t, m;
    xor.b32 t, $2, 0x80808080;
    prmt.b32 $0, t, 0x64646464, {first};
    prmt.b32 $1, t, 0x64646464, {second};
    mov.b32 m, 0x64806480;
    sub.f16x2 $0, $0, m;
    sub.f16x2 $1, $1, m;
    }}"""


# bytes 0, 1 and 2, 3 of the word: four consecutive weights of a row (:func:`_weights_f16`; the Gluon kernel's too)
I8_F16_PTX = tl.constexpr(i8_f16_pairs_ptx("0x4140", "0x4342"))
# which kernel runs a call: "triton" (the default, :func:`_gemv`) or "gluon" (:mod:`kernel.triton.gemv_gluon`, the
# same design with int8 weights' x staged in shared memory once; sm90+, where it supports the call; measured slower
# in decode, docs/benchmarks.md runs BQ-BX)
IMPL_ENV = "LMSTACK_GEMV_IMPL"
# int8 weight vectors: "x" (the default: 8 bytes where that puts the weight block's column slice in x's own layout,
# :func:`_wvec`), "wide" (16 bytes always, kernel 0.19's loads) or "att-wide" (16 bytes where x is a unified
# attention's accumulators, "x" elsewhere), for comparisons
WVEC_ENV = "LMSTACK_GEMV_WVEC"
# rows of two K steps: "two" (the default: the second step's weights and x asked for with the first's x after the PDL
# wait, where a thread holds at most HOIST_BYTES of them: one memory round trip after the wait, not two; bf16 decode
# of the 1.1B shape on an H200 at 1,405-1,406 tokens/s against 1,372-1,375, docs/benchmarks.md run CE;
# :func:`_hoist`) or "off" (each step's loads follow the products of the one before), for comparisons
HOIST_ENV = "LMSTACK_GEMV_HOIST"
HOIST_MODES = ("two", "off")
HOIST_BYTES = 128


def gemv_impl() -> str:
    """``$LMSTACK_GEMV_IMPL``: "triton" (the default) or "gluon"."""
    raw = os.environ.get(IMPL_ENV, "triton")
    if raw not in ("triton", "gluon"):
        raise ConfigError(IMPL_ENV, f"expected 'triton' (the default) or 'gluon', got {raw!r}")
    return raw


def late_consts() -> bool:
    """Whether ``$LMSTACK_GEMV_CONSTS`` asks for kernel 0.14's order ("late"; "early", the default, when unset)."""
    raw = os.environ.get(CONSTS_ENV, "early")
    if raw not in ("early", "late"):
        raise ConfigError(CONSTS_ENV, f"expected 'early' (the default) or 'late', got {raw!r}")
    return raw == "late"


def int8_mode() -> str:
    """How the gemv computes with int8 weights (``$LMSTACK_GEMV_INT8``: "f16", the default, "magic" or "cvt")."""
    raw = os.environ.get(INT8_ENV, "f16")
    if raw not in INT8_MODES:
        raise ConfigError(INT8_ENV, f"expected 'f16' (the default), 'magic' or 'cvt', got {raw!r}")
    return raw


@triton.jit
def _gemv(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, N, K, stride_wn, rms_eps, am_ptr, al_ptr, aacc_ptr, NS,
          HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, HAS_RES: tl.constexpr,
          GLU: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr, I8_MAGIC: tl.constexpr,
          PERSISTENT: tl.constexpr, I8_F16: tl.constexpr, LATE: tl.constexpr, WVEC: tl.constexpr,
          HOIST: tl.constexpr, ATT: tl.constexpr):
    # row blocks pid, pid + programs, ...: one each when the grid has a program per block, several when it is
    # persistent (a few programs per SM, so the next kernel's programs fit beside them once they trigger it)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    blocks = tl.cdiv(N, ROWS)
    kk = _wcols(tl.arange(0, BLOCK_K), WVEC)
    n, n_ok = _rows(pid, N, ROWS, GLU)
    # the first weight block, and the rows' int8 scales and bias, are loaded before anything the kernel before may
    # still be writing: launched with PDL, those loads are in flight while that kernel drains (after the row sums, a
    # scale or bias load would add a memory round trip to every call)
    w = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + kk[None, :], mask=n_ok[:, None] & (kk < K)[None, :],
                other=0)  # (ROWS, BLOCK_K)
    sc, bi = _row_consts(scale_ptr, bias_ptr, n, n_ok, HAS_SCALE and not LATE, HAS_BIAS and not LATE)
    # x and the residual only once the kernel before has finished; the next kernel may then start its own weight
    # loads (PDL 2, $LMSTACK_PDL_TRIGGER early, or mixed with int8 weights: as soon as this program's first weights
    # are asked for)
    pdl_enter(PDL)
    if PERSISTENT:
        for rb in range(pid, blocks, programs):
            # the next row block's first weight block (and scales, bias) is in flight while this one is computed
            # (past the last block its rows mask the loads off)
            n, n_ok = _rows(rb + programs, N, ROWS, GLU)
            w_next = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + kk[None, :],
                             mask=n_ok[:, None] & (kk < K)[None, :], other=0)
            sc_next, bi_next = _row_consts(scale_ptr, bias_ptr, n, n_ok, HAS_SCALE and not LATE,
                                           HAS_BIAS and not LATE)
            _block(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, N, K, stride_wn, rms_eps, rb, w, sc, bi,
                   am_ptr, al_ptr, aacc_ptr, NS, HAS_SCALE, HAS_BIAS, RMS, HAS_RES, GLU, ROWS, BLOCK_K, I8_MAGIC,
                   I8_F16, LATE, WVEC, HOIST, ATT)
            w, sc, bi = w_next, sc_next, bi_next
    else:  # a program per row block
        _block(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, N, K, stride_wn, rms_eps, pid, w, sc, bi,
               am_ptr, al_ptr, aacc_ptr, NS, HAS_SCALE, HAS_BIAS, RMS, HAS_RES, GLU, ROWS, BLOCK_K, I8_MAGIC, I8_F16,
               LATE, WVEC, HOIST, ATT)


@triton.jit
def _wcols(kk, WVEC: tl.constexpr):
    """The weight block's column offsets ``kk``, the same values, seen by the compiler as runs of WVEC (0: all of
    BLOCK_K): it then loads int8 weights WVEC bytes a vector, and where that is as many values as x's own vector
    the weight block's column slice is x's load layout, so x needs no shuffle through shared memory (:func:`_wvec`)."""
    if WVEC:
        return (kk // WVEC) * WVEC + kk % WVEC
    return kk


@triton.jit
def _row_consts(scale_ptr, bias_ptr, n, n_ok, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Rows ``n``'s weight scales and bias in fp32 (1 and 0 where absent): fixed for a decode step, so loaded with
    the weights."""
    sc = tl.full(n.shape, 1.0, tl.float32)
    bi = tl.zeros(n.shape, tl.float32)
    if HAS_SCALE:
        sc = tl.load(scale_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bi = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    return sc, bi


@triton.jit
def _rows(rb, N, ROWS: tl.constexpr, GLU: tl.constexpr):
    """Row block ``rb``'s weight rows and their mask. GLU: w is [gate | up] (N = 2F rows) and the block holds
    outputs rb * ROWS // 2 ..., their gate and up rows interleaved."""
    i = tl.arange(0, ROWS)
    if GLU:
        j = rb * (ROWS // 2) + i // 2
        return j + (i % 2) * (N // 2), j < N // 2
    n = rb * ROWS + i
    return n, n < N


@triton.jit
def _block(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, N, K, stride_wn, rms_eps, rb, w, sc, bi,
           am_ptr, al_ptr, aacc_ptr, NS, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
           HAS_RES: tl.constexpr, GLU: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
           I8_MAGIC: tl.constexpr, I8_F16: tl.constexpr, LATE: tl.constexpr, WVEC: tl.constexpr,
           HOIST: tl.constexpr, ATT: tl.constexpr):
    """Row block ``rb`` of the output, given its first weight block ``w`` and its rows' scales ``sc`` and bias
    ``bi`` (:func:`_row_consts`): the rest of K, then the epilogue. The residual is loaded with x's first block, so
    its round trip overlaps theirs rather than following the row sums. ``LATE`` (``$LMSTACK_GEMV_CONSTS=late``):
    the scales, bias and residual are loaded after the row sums instead, as kernel 0.14 did. I8_F16 (int8 weights,
    1: in Triton ops, 2: by inline PTX, two weights an instruction): the products and their sums over the K steps
    in fp16, with x scaled by F16_X_SCALE; the row sums and everything after in fp32."""
    n, n_ok = _rows(rb, N, ROWS, GLU)
    kk = tl.arange(0, BLOCK_K)
    w_row = w_ptr + n[:, None].to(tl.int64) * stride_wn
    kw = _wcols(kk, WVEC)
    # HOIST (a row of two K steps, :func:`_hoist`): the second step's weights are asked for before x, and its x
    # with the first's, so the row costs one memory round trip after the wait instead of two (x's first use by int8
    # weights moves it through shared memory, which waits for it: loads written after that would follow its arrival)
    if HOIST:
        w1 = _step_w(w_row, kw, n_ok, BLOCK_K, K)
    xdt = out_ptr.dtype.element_ty
    if ATT:  # the accumulators' flag, with x: all of the step's loads go out before the one branch on it
        flag = tl.load(x_ptr + K + K // ATT)
    x = _step_x(x_ptr, kk, 0, K, ATT, xdt, "")
    if HOIST:
        x1 = _step_x(x_ptr, kk, BLOCK_K, K, ATT, xdt, "")
    res = tl.zeros((ROWS,), tl.float32)
    if HAS_RES and not GLU and not LATE:
        res = tl.load(res_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    if ATT:  # noqa: SIM102 (flag exists only under the constexpr ATT)
        if flag != 0:  # rare: the splits' partials combined into the accumulators, then x read again (from L2)
            _att_merge(x_ptr, am_ptr, al_ptr, aacc_ptr, K, NS, ATT)
            x = _step_x(x_ptr, kk, 0, K, ATT, xdt, ".cg")
            if HOIST:
                x1 = _step_x(x_ptr, kk, BLOCK_K, K, ATT, xdt, ".cg")
    if I8_F16:
        acc = _weights_f16(w, I8_F16) * (x * F16_X_SCALE).to(tl.float16)[None, :]
    else:
        acc = _weights(w, I8_MAGIC) * x[None, :]
    ss = x * x
    if HOIST:
        acc, ss = _accumulate(acc, ss, w1, x1, RMS, I8_MAGIC, I8_F16)
    if not HOIST:  # a K step at a time: each step's loads follow the products of the one before
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w = _step_w(w_row, kw, n_ok, k0, K)
            x = _step_x(x_ptr, kk, k0, K, ATT, xdt, ".cg" if ATT else "")
            acc, ss = _accumulate(acc, ss, w, x, RMS, I8_MAGIC, I8_F16)
    if I8_F16:
        y = tl.sum(acc.to(tl.float32), 1) * (1.0 / F16_X_SCALE)  # (ROWS,)
    else:
        y = tl.sum(acc, 1)  # (ROWS,)
    if RMS:  # RMSNorm of x without its weight (folded into w): (x * rstd) @ w.T = rstd * (x @ w.T)
        y = y * tl.rsqrt((tl.sum(ss, 0) / K + rms_eps).to(tl.float32))
    if LATE:
        sc, bi = _row_consts(scale_ptr, bias_ptr, n, n_ok, HAS_SCALE, HAS_BIAS)
    if HAS_SCALE:
        y = y * sc
    if HAS_BIAS:
        y = y + bi
    if GLU:  # silu(gate) * up of each pair, the projection's values rounded to the output dtype first (as stored)
        gate, up = tl.split(tl.reshape(y.to(out_ptr.dtype.element_ty).to(tl.float32), (ROWS // 2, 2)))
        jj = rb * (ROWS // 2) + tl.arange(0, ROWS // 2)
        tl.store(out_ptr + jj, (gate * tl.sigmoid(gate) * up).to(out_ptr.dtype.element_ty), mask=jj < N // 2)
    else:
        if HAS_RES and LATE:
            y = y + tl.load(res_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        elif HAS_RES:
            y = y + res
        tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _step_w(w_row, kw, n_ok, k0, K):
    """The weight block of the K step at column ``k0``, zero past K."""
    return tl.load(w_row + (k0 + kw)[None, :], mask=n_ok[:, None] & (k0 + kw < K)[None, :], other=0)


@triton.jit
def _step_x(x_ptr, kk, k0, K, ATT: tl.constexpr, XDT: tl.constexpr, CACHE: tl.constexpr):
    """x (fp32) of the K step at column ``k0``, zero past K. ``ATT`` (the head dim): x_ptr holds a unified-shift
    decode attention's accumulators (K = H x Dh outputs, H sums, a flag; ``decode_attention_unified``), and x is
    each output over its head's sum, rounded to ``XDT`` as the attention kernel's own output would be (a flagged
    row is first combined into them by :func:`_att_merge`)."""
    col = k0 + kk
    ok = col < K
    if ATT:
        a = tl.load(x_ptr + col, mask=ok, other=0.0, cache_modifier=CACHE)
        den = tl.load(x_ptr + K + col // ATT, mask=ok, other=1.0, cache_modifier=CACHE)
        return tl.fdiv(a, den).to(XDT).to(tl.float32)
    return tl.load(x_ptr + col, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _att_merge(x_ptr, am_ptr, al_ptr, aacc_ptr, K, NS, DH: tl.constexpr):
    """A flagged row (rare: a split's max far past the shared shift): its attention output from the splits'
    partials, each rescaled to the largest max, summed in split order, over the rescaled sums (zero for an empty
    row), written over the row's outputs with every sum set to 1, so the caller's read gives it. Every program of
    the call writes the same values; the loops keep one head (DH columns) in registers at a time, so the common
    path's register count does not grow."""
    d = tl.arange(0, DH)
    for h in range(K // DH):
        mx = float("-inf")
        for s in range(NS):
            mx = tl.maximum(mx, tl.load(am_ptr + h * NS + s))
        mx = tl.where(mx > float("-inf"), mx, 0.0)
        num = tl.zeros((DH,), tl.float32)
        den = 0.0
        for s in range(NS):
            w = tl.exp(tl.load(am_ptr + h * NS + s) - mx)
            num += w * tl.load(aacc_ptr + (h * NS + s) * DH + d)
            den += w * tl.load(al_ptr + h * NS + s)
        tl.store(x_ptr + h * DH + d, tl.where(den > 0, num / tl.maximum(den, 1e-30), 0.0))
        tl.store(x_ptr + K + h, 1.0)
    tl.debug_barrier()  # the stores before this program's reads


@triton.jit
def _accumulate(acc, ss, w, x, RMS: tl.constexpr, I8_MAGIC: tl.constexpr, I8_F16: tl.constexpr):
    """One more K step's products added to ``acc`` (packed fp16 for I8_F16, else fp32), and x's squares to ``ss``
    where a folded RMSNorm needs them."""
    if I8_F16:
        acc += _weights_f16(w, I8_F16) * (x * F16_X_SCALE).to(tl.float16)[None, :]
    else:
        acc += _weights(w, I8_MAGIC) * x[None, :]
    if RMS:
        ss += x * x
    return acc, ss


@triton.jit
def _weights(w, I8_MAGIC: tl.constexpr):
    """A weight block in fp32. I8_MAGIC (int8 weights): without the int-to-float conversion instruction, which runs
    at a quarter of the FP32 rate: q + 128 (0..255) in the mantissa of 2^23 is the float 2^23 + 128 + q, exactly,
    and subtracting 2^23 + 128 leaves q (an integer add and a float add a weight, both full rate)."""
    if I8_MAGIC:
        return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    return w.to(tl.float32)


@triton.jit
def _weights_f16(w, I8_F16: tl.constexpr):
    """An int8 weight block in fp16, exactly: q + 128 (0..255) in the mantissa of 1024 is the fp16 1152 + q, and
    subtracting 1152 leaves q. I8_F16 2: four weights a 32-bit word, by PTX (a flip of the sign bits, two byte
    permutes into fp16 pairs, two packed subtractions: 1.25 instructions a weight); 1: the same values by Triton's
    integer and float ops (which Triton's interpreter runs)."""
    if I8_F16 == 2:
        return tl.inline_asm_elementwise(asm=I8_F16_PTX, constraints="=r,=r,r", args=[w], dtype=tl.float16,
                                         is_pure=True, pack=4)
    return ((w.to(tl.uint8, bitcast=True) ^ 0x80).to(tl.uint16) | 0x6400).to(tl.float16, bitcast=True) - 1152.0


def load_tiles(path: str | os.PathLike | None = None) -> dict[str, dict[str, list[int]]]:
    """Measured tiles, ``{card name: {tile_key: [ROWS, BLOCK_K, num_warps, PDL(, PER_SM)]}}``: the table shipped
    beside this module, updated by the JSON file named in ``$LMSTACK_GEMV_TILES`` (same format) when set, or by
    ``path``. PER_SM (optional, 0 when absent): programs per SM of a persistent grid (:func:`gemv`)."""
    return load_table(Path(__file__).with_name("gemv_tiles.json"), TILES_ENV, path,
                      lambda cfg: isinstance(cfg, list) and len(cfg) in (4, 5) and all(type(v) is int for v in cfg)
                      and all(v > 0 and v & (v - 1) == 0 for v in cfg[:3]) and cfg[3] in (0, 1)
                      and (len(cfg) == 4 or cfg[4] >= 0),
                      "[ROWS, BLOCK_K, num_warps, PDL(, PER_SM)]: three positive powers of two, 0 or 1, and "
                      "optionally a count >= 0")


def has_pdl_tiles(card: str) -> bool:
    """Whether this card's table launches some weight shape with PDL (``$LMSTACK_GEMV`` not ``0``): where a
    one-row decode step gains from the registry's ``triton_skinny_pdl`` linear."""
    return os.environ.get(SWITCH_ENV, "1") != "0" and any(cfg[3] for cfg in load_tiles().get(card, {}).values())


@torch.compiler.assume_constant_result
def choose_tiles(N: int, K: int, weight_dtype: torch.dtype, card: str, glu: bool = False,
                 att: bool = False) -> tuple[int, ...]:
    """The measured (ROWS, BLOCK_K, num_warps, PDL) of this (card, weight), or () where the table has none or
    ``$LMSTACK_GEMV`` is ``0``. ``glu`` (the SwiGLU in the epilogue): the entry keyed ``"<shape> glu"`` when
    measured, else the plain entry with ROWS made even. ``att`` (x from a unified attention's accumulators): the
    entry keyed ``"<shape> att"`` when measured, else the plain entry."""
    switch = os.environ.get(SWITCH_ENV, "1")
    if switch not in ("0", "1"):
        raise ConfigError(SWITCH_ENV, f"expected 0 (off) or 1 (the measured table), got {switch!r}")
    if switch == "0":
        return ()
    entries = load_tiles().get(card, {})
    key = tile_key(N, K, weight_dtype)
    if glu and f"{key} glu" in entries:
        return tuple(entries[f"{key} glu"])
    if att and f"{key} att" in entries:
        return tuple(entries[f"{key} att"])
    cfg = tuple(entries.get(key, ()))
    return (max(cfg[0], 2), *cfg[1:]) if glu and cfg else cfg


def gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
         config: tuple[int, ...], out_dtype: torch.dtype | None = None, rms_eps: float | None = None,
         residual: torch.Tensor | None = None, pdl: bool = False, glu: bool = False,
         att: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x (1, K) float @ w (N, K).T (float or int8) -> (1, N), times ``scale`` (N,) when given, plus ``bias``;
    ``rms_eps``: x RMS-normalised (no weight) first; ``residual`` (1, N) added last. ``config``: (ROWS, BLOCK_K,
    num_warps), powers of two, then a table entry's PDL (ignored here: ``pdl`` decides) and PER_SM: 0 (or absent)
    for a program per row block, else a persistent grid of PER_SM programs per SM, each looping over row blocks,
    so the next PDL-launched kernel's programs fit beside them. ``pdl``: launch
    with programmatic dependent launch where the device has it (sm90+; ignored elsewhere): each program's first
    weight block is loaded while the kernel before drains, so w must not be written by that kernel. ``glu``: w is a
    fused gate/up projection (N = 2F, gate rows first) and the result is ``silu(gate) * up``, (1, F), computed in
    the epilogue (ROWS must be even; no residual). ``att``: x is a unified-shift decode attention's accumulators row
    (1, W) fp32 and ``att`` its splits' partials (acc (1, H, NS, Dh), m, l (1, H, NS);
    ``decode_attention_unified``): the projection reads the attention output from them (one output per weight
    column, K = H x Dh) as :func:`kernel.reference.unified_output` computes it, in ``out_dtype`` (required)."""
    if x.dim() != 2 or x.shape[0] != 1 or x.stride(-1) != 1:
        raise ShapeError(f"gemv takes one contiguous activation row (1, K), got shape {tuple(x.shape)}")
    N, K = w.shape
    x_dtype = x.dtype
    if att is not None:
        x_dtype = _check_att(x, att, K, out_dtype, glu, rms_eps)
    elif x.shape[1] != K:
        raise ShapeError(f"gemv: weight {tuple(w.shape)} (contiguous rows) does not match x {tuple(x.shape)}")
    if w.stride(-1) != 1:
        raise ShapeError(f"gemv: weight {tuple(w.shape)} (contiguous rows) does not match x {tuple(x.shape)}")
    if glu and (N % 2 or config[0] % 2 or residual is not None):
        raise ShapeError(f"gemv: glu needs an even number of weight rows (got {N}) and of ROWS (got {config[0]}), "
                         f"and no residual")
    rows, block_k, warps = config[:3]
    per_sm = config[4] if len(config) > 4 else 0
    blocks = triton.cdiv(N, rows)
    programs = min(blocks, per_sm * device_info(x)[0]) if per_sm else blocks
    pdl = pdl and pdl_capable(x)
    out = torch.empty(1, N // 2 if glu else N, dtype=out_dtype or x.dtype, device=x.device)
    res = residual if residual is None or residual.stride(-1) == 1 else residual.contiguous()
    mode = int8_mode() if w.dtype == torch.int8 else None
    f16 = _i8_f16(w, rows * block_k // (32 * warps), x_dtype)
    trigger = pdl_mode(pdl, early_when_mixed=w.dtype == torch.int8)
    # (inside a torch.compile trace the Triton kernel runs: inductor traces Triton kernels, not Gluon ones; the PDL
    # op, which compile does not trace into, takes the Gluon kernel)
    if gemv_impl() == "gluon" and not torch.compiler.is_compiling():
        try:  # Triton's Gluon, imported only when asked for
            from kernel.triton import gemv_gluon
        except ImportError as e:
            raise ConfigError(IMPL_ENV, f"'gluon' needs a Triton with Gluon (triton.experimental.gluon; the cards "
                                        f"here ran 3.6): {e}") from e

        if att is None and gemv_gluon.supports(x, w, f16, programs < blocks, block_k):
            gemv_gluon.gemv_gluon(x, w, out, scale, bias, res, N, K, rms_eps, rows=rows, block_k=block_k,
                                  warps=warps, pdl_mode=trigger, glu=glu, launch_pdl=pdl)
            return out
    am, al, aacc = (att[1], att[2], att[0]) if att is not None else (x, x, x)
    _gemv[(programs,)](
        x, w, out, scale if scale is not None else x, bias if bias is not None else x, res if res is not None else x,
        N, K, w.stride(0), float(rms_eps or 0.0), am, al, aacc, att[0].shape[2] if att is not None else 0,
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        RMS=rms_eps is not None, HAS_RES=res is not None, GLU=glu, ROWS=rows, BLOCK_K=block_k, PDL=trigger,
        I8_MAGIC=mode is not None and mode != "cvt" and not f16, PERSISTENT=programs < blocks,
        num_warps=warps, I8_F16=f16, LATE=late_consts(), WVEC=_wvec(w, x_dtype, block_k, warps, K, att is not None),
        HOIST=_hoist(w, rows, block_k, warps, K), ATT=att[0].shape[3] if att is not None else 0,
        **({"launch_pdl": True} if pdl else {}))
    return out


def _check_att(x: torch.Tensor, att: tuple[torch.Tensor, torch.Tensor, torch.Tensor], K: int,
               out_dtype: torch.dtype | None, glu: bool, rms_eps: float | None) -> torch.dtype:
    """gemv's ``att`` call: the accumulators row and partials of a one-row unified-shift attention whose H x Dh
    outputs are the weight's K columns; returns the attention output's dtype (``out_dtype``)."""
    acc, m, l_s = att
    if acc.dim() != 4 or acc.shape[0] != 1 or acc.shape[1] * acc.shape[3] != K:
        raise ShapeError(f"gemv: att's partial outputs should be (1, H, NS, Dh) with H x Dh = K = {K}, got "
                         f"{tuple(acc.shape)}")
    H, ns, dh = acc.shape[1:]
    if tuple(m.shape) != (1, H, ns) or tuple(l_s.shape) != (1, H, ns) or not all(
            t.dtype == torch.float32 and t.is_contiguous() for t in (acc, m, l_s)):
        raise ShapeError(f"gemv: att's maxes and sums should be contiguous fp32 (1, {H}, {ns}) like its outputs "
                         f"{tuple(acc.shape)}, got {tuple(m.shape)} {m.dtype} and {tuple(l_s.shape)} {l_s.dtype}")
    if x.dtype != torch.float32 or x.shape[1] < K + H + 1:
        raise ShapeError(f"gemv: with att, x is the fp32 accumulators row (1, >= {K + H + 1}: H x Dh outputs, H "
                         f"sums, a flag), got {tuple(x.shape)} {x.dtype}")
    if out_dtype is None or glu or rms_eps is not None:
        raise ShapeError("gemv: att takes out_dtype (the attention output's dtype) and no glu or rms_eps")
    return out_dtype


def _wvec(w: torch.Tensor, x_dtype: torch.dtype, block_k: int, warps: int, K: int, att: bool = False) -> int:
    """The kernel's WVEC: 8 for int8 weights times 2-byte activations where one K step covers the row (``block_k >=
    K``) and a thread's share of it holds a whole 16-byte vector of x (8 values): the weights are then loaded 8
    bytes a vector, in x's own layout, and x needs no shuffle through shared memory. Else 0 (16-byte weight
    vectors; for rows of several K steps the doubled load count cost more than the shuffle, run CA). ``att`` (x
    from fp32 accumulators, four values a 16-byte vector): 4 for any weight where a thread's share holds a vector.
    ``$LMSTACK_GEMV_WVEC=wide``: always 0; ``att-wide``: 0 for ``att`` calls only (x shuffled into the 16-byte
    weight vectors' layout through shared memory), the rest as "x"."""
    raw = os.environ.get(WVEC_ENV, "x")
    if raw not in ("x", "wide", "att-wide"):
        raise ConfigError(WVEC_ENV, f"expected 'x' (the default: 8-byte int8 weight vectors where they put the "
                                    f"weights in x's layout), 'wide' (16-byte vectors always) or 'att-wide' "
                                    f"(16-byte vectors where x is a unified attention's accumulators), got {raw!r}")
    if att:  # x from fp32 accumulators, four a 16-byte vector: the weights four a vector in that layout
        return 4 if raw == "x" and block_k // (32 * warps) >= 4 else 0
    if raw == "att-wide":
        raw = "x"
    if (raw == "wide" or w.dtype != torch.int8 or x_dtype.itemsize != 2 or block_k // (32 * warps) < 8
            or block_k < K):
        return 0
    return 8


def _hoist(w: torch.Tensor, rows: int, block_k: int, warps: int, K: int) -> bool:
    """The kernel's HOIST: a row of two K steps whose second step puts at most HOIST_BYTES of weights in a thread
    (``rows * block_k * bytes / (32 * warps)``) asks for them, and that step's x, with the first step's x after the
    PDL wait. Not for rows of three or more: the int8 and bf16 down projections' three steps, all asked for at once
    after the wait, lost 20 and 57 us a token on an H200 (docs/benchmarks.md run CD). ``$LMSTACK_GEMV_HOIST``:
    "two" (the default) or "off"."""
    raw = os.environ.get(HOIST_ENV, "two")
    if raw not in HOIST_MODES:
        raise ConfigError(HOIST_ENV, f"expected one of {', '.join(map(repr, HOIST_MODES))}, got {raw!r}")
    held = rows * block_k * w.element_size() // (32 * warps)
    return raw == "two" and triton.cdiv(K, block_k) == 2 and held <= HOIST_BYTES


def _i8_f16(w: torch.Tensor, per_thread: int, x_dtype: torch.dtype = torch.bfloat16) -> int:
    """The kernel's I8_F16: 0 unless int8 weights with ``$LMSTACK_GEMV_INT8=f16`` and bf16 activations (fp16's
    products carry three bits more than bf16; fp16 and fp32 activations keep fp32 products, the exact add's); then 2
    (inline PTX, four weights a call) on a GPU where a thread holds at least four weights of a block
    (``per_thread``), else 1 (Triton ops, the same values), as under Triton's interpreter, which cannot run inline
    assembly."""
    if w.dtype != torch.int8 or int8_mode() != "f16" or x_dtype != torch.bfloat16:
        return 0
    return 2 if os.environ.get("TRITON_INTERPRET") != "1" and per_thread >= 4 else 1


@torch.library.custom_op("lmstack::gemv_pdl", mutates_args=())
def _gemv_pdl(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
              rms_eps: float | None, residual: torch.Tensor | None, rows: int, block_k: int,
              warps: int, glu: bool = False, per_sm: int = 0, att_acc: torch.Tensor | None = None,
              att_m: torch.Tensor | None = None, att_l: torch.Tensor | None = None,
              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """gemv(pdl=True) as an op torch.compile does not trace into: inductor launches the Triton kernels it traces
    without the PDL attribute, Triton's own launcher (here) with it. ``att_acc``/``att_m``/``att_l`` and
    ``out_dtype``: gemv's ``att`` (x the accumulators row). A flagged row's merged outputs are written back over
    that row (the same attention output, so the op declares no mutation: nothing reads the row but this op, and
    the next step's attention zeroes it)."""
    att = None if att_acc is None else (att_acc, att_m, att_l)
    return gemv(x, w, scale, bias, config=(rows, block_k, warps, 1, per_sm), rms_eps=rms_eps, residual=residual,
                pdl=True, glu=glu, att=att, out_dtype=out_dtype)


@_gemv_pdl.register_fake
def _gemv_pdl_shape(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                    rms_eps: float | None, residual: torch.Tensor | None, rows: int, block_k: int,
                    warps: int, glu: bool = False, per_sm: int = 0, att_acc: torch.Tensor | None = None,
                    att_m: torch.Tensor | None = None, att_l: torch.Tensor | None = None,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return x.new_empty((1, w.shape[0] // 2 if glu else w.shape[0]), dtype=out_dtype or x.dtype)
