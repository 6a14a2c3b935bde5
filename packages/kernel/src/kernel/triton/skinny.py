"""Skinny matmul for decode in Triton: ``y = x @ w.T (* scale) (+ bias)`` for a few rows of x, bf16 or int8 weights.

A decode step multiplies 1-16 activation rows by every weight matrix once: the time is the weight bytes over the
bandwidth the kernel sustains, and a plain GEMV loop keeps too few bytes in flight to approach it (the int8 GEMV in
``kernel.triton.int8_linear`` sustained about 16% of the H200's copy bandwidth; inductor's generated
matrix-vector reductions 25-63%, cuBLAS 35-85% by shape; docs/benchmarks.md). Here each program computes a
(16, BLOCK_N) output tile with ``tl.dot`` over its share of K, so Triton's software pipeliner streams the weight
tiles through shared memory ``NUM_STAGES`` deep (asynchronous copies, many tiles in flight per SM), and the K
dimension is split over ``SPLIT_K`` programs when N alone gives too few programs to fill the GPU. Partial sums go
to an fp32 buffer summed afterwards (deterministic, unlike atomics). Int8 weights are converted in registers after
the load, so they cross the memory bus as one byte each; the per-channel scale is applied to the fp32 result.

When K is not split, the per-channel scale, the bias and the cast to the output dtype happen in the same kernel.

Rows past 16 are left to torch's matmul (compute-bound there). The tiles (BLOCK_N, BLOCK_K, SPLIT_K, stages,
warps) of each weight shape come from a table measured per card (``skinny_tiles.json`` beside this module, written
by ``benchmarks/bench_decode_kernels.py --tune-skinny``, which times every candidate inside a CUDA graph with the
weights rotated past the L2 cache); ``$LMSTACK_SKINNY_TILES`` names a table of one's own in the same format. Shapes
or cards not in it get :func:`tiles` (enough programs for every SM, ~32 KB in flight per program). Semantics:
:func:`kernel.reference.linear` and :func:`kernel.reference.int8_linear`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import triton
import triton.language as tl

from kernel.reference import (
    SPLIT_COUNTER_COLUMNS,
    UnifiedParts,
    check_att,
    check_glu,
    check_split_counters,
    glu_output,
)
from kernel.reference import int8_linear as _int8_reference
from kernel.reference import linear as _reference
from kernel.triton._device import device_info, pdl_capable
from kernel.triton._tables import load_table, tile_key
from kernel.triton.gemv import choose_tiles as choose_gemv_tiles
from kernel.triton.gemv import gemv
from specs.errors import ConfigError

MAX_ROWS = 16
# rms_eps: how many values of x (rows x columns, a power of two) each program loads before its weight loop for the
# rows' sums of squares (16 per thread at four warps); the rest, if any, is loaded after the loop
RMS_BLOCK = 2048
# pdl=True: weights up to this size are prefetched to L2 before the kernel waits for its predecessor (the H100/H200
# L2 holds 50 MB; larger weights would evict their own first lines before the loop reads them).
# $LMSTACK_PDL_PREFETCH_BYTES overrides it per process (0: no prefetch, for comparing the two).
PDL_PREFETCH_BYTES = 24 << 20
PREFETCH_ENV = "LMSTACK_PDL_PREFETCH_BYTES"


def pdl_prefetch_bytes() -> int:
    """The largest weight the PDL kernel prefetches: ``$LMSTACK_PDL_PREFETCH_BYTES`` or PDL_PREFETCH_BYTES."""
    raw = os.environ.get(PREFETCH_ENV)
    if raw is None:
        return PDL_PREFETCH_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(PREFETCH_ENV, f"expected a byte count >= 0, got {raw!r}")
    return value


@triton.jit
def _skinny(x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, ws_ptr, ss_ptr, cnt_ptr, M, N, K, K_PER_SPLIT,
            SPLIT, stride_xm, stride_wn, stride_os, stride_om, stride_rm, rms_eps, UPCAST: tl.constexpr,
            FINAL: tl.constexpr, SERIAL: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
            RMS: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr,
            W_LINE: tl.constexpr, RMS_ROWS: tl.constexpr, RMS_K: tl.constexpr, SPLIT_P2: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m = tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    if PDL:  # launched while the kernel before it drains (programmatic dependent launch, sm90+)
        if PREFETCH:  # the weights do not depend on that kernel: pull this program's strip toward L2 meanwhile,
            # one prefetch per 128-byte line (W_LINE elements); clamped addresses only repeat a line
            nn = tl.minimum(n, N - 1)
            for k0 in range(k_lo, k_hi, W_LINE * 8):
                kk = tl.minimum(k0 + tl.arange(0, 8) * W_LINE, k_hi - 1)
                tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l",
                                          [w_ptr + nn[:, None].to(tl.int64) * stride_wn + kk[None, :]],
                                          dtype=tl.int32, is_pure=False, pack=1)
        tl.extra.cuda.gdc_wait()  # x (and the output buffers) only after the kernel before has finished
        tl.extra.cuda.gdc_launch_dependents()  # and let the next PDL kernel start its own prologue
    if RMS:  # the rows' sums of squares over this program's share of K, kept out of the weight loop: the first
        # RMS_ROWS x RMS_K block of x is loaded here, before the loop, so its latency hides behind the weight
        # stream; it is reduced after the loop
        r = tl.arange(0, RMS_ROWS)
        kr = tl.arange(0, RMS_K)
        x_rms = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_xm + (k_lo + kr)[None, :],
                        mask=(r < M)[:, None] & ((k_lo + kr) < k_hi)[None, :], other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_hi
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)  # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0)  # (BLOCK_N, BLOCK_K), int8 or float
        if UPCAST:  # fp32 activations, or the interpreter's bf16: exact fp32 products
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    ss = tl.zeros((BLOCK_M,), tl.float32)
    if RMS:  # this share's sums of squares per row (rstd = 1 / sqrt(sum over all of K / K + eps), applied last)
        xf = x_rms.to(tl.float32)
        sr = tl.sum(xf * xf, 1)  # (RMS_ROWS,), scattered to the output rows below
        ss = tl.sum(tl.where(m[:, None] == r[None, :], sr[None, :], 0.0), 1)
        for r0 in range(0, M, RMS_ROWS):  # the rest of x (more rows or a longer K): nothing at batch 1, K <= 2048
            for kb in range(k_lo, k_hi, RMS_K):
                if r0 + kb - k_lo > 0:
                    rr = r0 + r
                    kk = kb + kr
                    xb = tl.load(x_ptr + rr[:, None].to(tl.int64) * stride_xm + kk[None, :],
                                 mask=(rr < M)[:, None] & (kk < k_hi)[None, :], other=0.0).to(tl.float32)
                    sb = tl.sum(xb * xb, 1)
                    ss += tl.sum(tl.where(m[:, None] == rr[None, :], sb[None, :], 0.0), 1)
    out_mask = m_ok[:, None] & n_ok[None, :]
    if FINAL:  # the whole of K in this program: scale, bias and the cast to the output dtype here, one kernel
        _finish(acc, ss, m, n, m_ok, n_ok, out_ptr, scale_ptr, bias_ptr, res_ptr, stride_om, stride_rm, K, rms_eps,
                HAS_SCALE, HAS_BIAS, RMS, HAS_RES)
    else:  # fp32 partial sums of this split, summed in a fixed order: afterwards, or by the last split (SERIAL)
        tl.store(ws_ptr + split * stride_os + m[:, None] * stride_om + n[None, :], acc, mask=out_mask)
        if SERIAL:
            if RMS:
                tl.store(ss_ptr + (pid_n * SPLIT + split) * BLOCK_M + m, ss)
            tl.debug_barrier()  # every thread's stores before the count that publishes them
            done = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if done == SPLIT - 1:  # the last split of this column tile to finish: sum all, finish, reset
                sp = tl.arange(0, SPLIT_P2)
                sp_ok = sp < SPLIT
                # .cg: from L2, where the other programs' stores are, never a stale L1 line
                parts = tl.load(ws_ptr + sp[:, None, None] * stride_os + m[None, :, None] * stride_om
                                + n[None, None, :], mask=sp_ok[:, None, None] & out_mask[None, :, :], other=0.0,
                                cache_modifier=".cg")
                total_ss = ss
                if RMS:
                    total_ss = tl.sum(tl.load(ss_ptr + (pid_n * SPLIT + sp[:, None]) * BLOCK_M + m[None, :],
                                              mask=sp_ok[:, None], other=0.0, cache_modifier=".cg"), 0)
                _finish(tl.sum(parts, 0), total_ss, m, n, m_ok, n_ok, out_ptr, scale_ptr, bias_ptr, res_ptr,
                        stride_om, stride_rm, K, rms_eps, HAS_SCALE, HAS_BIAS, RMS, HAS_RES)
                tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # ready for the next call


@triton.jit
def _finish(acc, ss, m, n, m_ok, n_ok, out_ptr, scale_ptr, bias_ptr, res_ptr, stride_om, stride_rm, K, rms_eps,
            HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, HAS_RES: tl.constexpr):
    """The epilogue of the whole of K: rstd (a folded RMSNorm), scale, bias, residual, the cast and the store."""
    if RMS:  # RMSNorm of x without its weight (folded into w): (x * rstd) @ w.T = rstd * (x @ w.T)
        # (inductor's launcher passes a Python float as fp64: the cast keeps the rsqrt in fp32)
        acc = acc * tl.rsqrt((ss / K + rms_eps).to(tl.float32))[:, None]
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:  # a residual stream added to the result
        acc = acc + tl.load(res_ptr + m[:, None].to(tl.int64) * stride_rm + n[None, :], mask=out_mask,
                            other=0.0).to(tl.float32)
    tl.store(out_ptr + m[:, None] * stride_om + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def tiles(N: int, K: int, weight_bytes: int, num_sms: int) -> tuple[int, int, int, int, int]:
    """The default (BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES, num_warps) for shapes and cards the table lacks: a
    32 x 256-byte weight tile per stage, five stages, four warps, and K split only when the column tiles alone
    would leave most SMs idle (fewer than a quarter of them), then until at least half have a program. On the H200 the
    tuner found the unsplit tile fastest at every 1.1B decode shape but one (a split-K's partial sums cost a kernel)."""
    block_n, block_k = 32, 256 // weight_bytes
    programs_n = triton.cdiv(N, block_n)
    split = 1
    if programs_n < num_sms // 4:
        while programs_n * split < num_sms // 2 and K // (2 * split * block_k) >= 2:
            split *= 2
    return block_n, block_k, split, 5, 4


TILES_ENV = "LMSTACK_SKINNY_TILES"


def load_tiles(path: str | os.PathLike | None = None) -> dict[str, dict[str, list[int]]]:
    """Measured tiles, ``{card name: {tile_key: [BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES, num_warps]}}``: the table
    shipped beside this module (written by ``benchmarks/bench_decode_kernels.py --tune-skinny``), updated by the
    JSON file named in ``$LMSTACK_SKINNY_TILES`` (same format) when set, or by ``path``."""
    return load_table(Path(__file__).with_name("skinny_tiles.json"), TILES_ENV, path,
                      lambda cfg: isinstance(cfg, list) and len(cfg) == 5
                      and all(isinstance(v, int) and v > 0 for v in cfg),
                      "five positive integers [BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES, num_warps]")


@torch.compiler.assume_constant_result
def choose_tiles(N: int, K: int, weight_dtype: torch.dtype, num_sms: int, card: str) -> tuple[int, ...]:
    """The measured tiles of this (card, weight) when the table has them, else :func:`tiles`."""
    cfg = load_tiles().get(card, {}).get(tile_key(N, K, weight_dtype))
    if cfg is not None:
        return tuple(cfg)
    return tiles(N, K, torch.empty((), dtype=weight_dtype).element_size(), num_sms)


def skinny_plan(x: torch.Tensor, w: torch.Tensor, config: tuple[int, ...] | None = None,
                rms_eps: float | None = None, serial: bool = False) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES, num_warps, K per split) for x (M, K) @ w (N, K).T: ``config`` or
    the table's tiles (or the default rule), the split rounded to whole K tiles. With ``rms_eps`` K is split only
    when ``serial`` (the last split sums the rows' squares with the partials; otherwise a program must see all of
    x). A function of shapes, dtypes and the card alone, so a fake (shape-only) call plans the same launch."""
    K, N = x.shape[1], w.shape[0]
    sms, card = device_info(x)
    block_n, block_k, split, stages, warps = config or choose_tiles(N, K, w.dtype, sms, card)
    if rms_eps is not None and not serial:
        split = 1
    k_per_split = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    return block_n, block_k, triton.cdiv(K, k_per_split), stages, warps, k_per_split


def counters_needed(N: int) -> int:
    """Entries of a ``split_counters`` buffer that serves any tile of at least 16 columns of an N-column weight
    (one per column tile; :func:`kernel.reference.linear_split_counters` makes one)."""
    return triton.cdiv(N, SPLIT_COUNTER_COLUMNS)


def skinny_mm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, *, out_dtype: torch.dtype | None = None,
              config: tuple[int, ...] | None = None, rms_eps: float | None = None,
              residual: torch.Tensor | None = None, pdl: bool = False,
              split_counters: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) float @ w (N, K).T (float or int8) -> (M, N), times ``scale`` (N,) when given, plus ``bias``.
    ``config`` (BLOCK_N, BLOCK_K, SPLIT_K, NUM_STAGES, num_warps) overrides the table's tiles (the tuner's knob).
    ``rms_eps``: x is RMS-normalised (no weight) first, rstd from the rows' sums of squares (computed beside the
    weight loop, applied in the epilogue). ``residual`` (M, N): added to the result. ``pdl``: launch with
    programmatic dependent launch where the device has it (sm90+; ignored elsewhere): the kernel starts while the
    one before it drains, prefetches its weights to L2 when they fit (:func:`pdl_prefetch_bytes`), and waits for
    that kernel only before it reads x. ``split_counters``: a zeroed int32 buffer of at least
    :func:`counters_needed` entries, left zeroed: with it a split K is summed by its last split to finish (one
    kernel: the rest of the epilogue there too); without, by a second pass (routed Linears keep a buffer under
    ``$LMSTACK_SPLIT_COMBINE=last``). Calls sharing a buffer must not run concurrently."""
    out = skinny_partials(x, w, scale, bias, out_dtype=out_dtype, config=config, rms_eps=rms_eps,
                          residual=residual, pdl=pdl, split_counters=split_counters)
    return out if out.dim() == 2 else finish_partials(out, scale, bias, residual, out_dtype or x.dtype)


def skinny_partials(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, *, out_dtype: torch.dtype | None = None,
                    config: tuple[int, ...] | None = None, rms_eps: float | None = None,
                    residual: torch.Tensor | None = None, pdl: bool = False,
                    split_counters: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel launch of :func:`skinny_mm` alone: the finished (M, N) result when K is not split or the splits
    are summed in the kernel (``split_counters``), else the (SPLIT_K, M, N) fp32 partial sums, which
    :func:`finish_partials` turns into the result (scale, bias and residual applied there). Kept apart so the PDL
    twin's opaque op ends at the kernel and torch.compile fuses the sum with what follows."""
    M, K = x.shape
    N = w.shape[0]
    pdl = pdl and pdl_capable(x)
    block_n, block_k, split, stages, warps, k_per_split = skinny_plan(x, w, config, rms_eps,
                                                                     serial=split_counters is not None)
    serial = split > 1 and split_counters is not None
    if serial:
        check_split_counters("skinny_mm", split_counters, triton.cdiv(N, block_n), "one per column tile", x.device)
    upcast = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    final = split == 1
    out_dtype = out_dtype or x.dtype
    n_tiles = triton.cdiv(N, block_n)
    if final or serial:
        out = torch.empty(M, N, dtype=out_dtype, device=x.device)
    if final:
        ws, stride_os = out, 0
    else:
        ws = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
        stride_os = ws.stride(0)
        out = out if serial else ws
    ss_ws = (torch.empty(n_tiles * split * 16, dtype=torch.float32, device=x.device) if serial and rms_eps is not None
             else ws)
    res = residual if residual is None or residual.stride(-1) == 1 else residual.contiguous()
    # rms_eps: the block of x loaded before the weight loop for the sums of squares, at most RMS_BLOCK values
    rms_k = min(triton.next_power_of_2(k_per_split if serial else K), RMS_BLOCK)
    rms_rows = min(triton.next_power_of_2(M), RMS_BLOCK // rms_k)
    _skinny[(n_tiles, split)](
        x, w, out, scale if scale is not None else x, bias if bias is not None else x, res if res is not None else x,
        ws, ss_ws, split_counters if serial else ws, M, N, K, k_per_split, split, x.stride(0), w.stride(0),
        stride_os, N, res.stride(0) if res is not None else 0, float(rms_eps or 0.0), UPCAST=upcast, FINAL=final,
        SERIAL=serial, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, RMS=rms_eps is not None,
        HAS_RES=res is not None and (final or serial), BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        NUM_STAGES=stages, PDL=pdl,
        PREFETCH=pdl and w.numel() * w.element_size() <= pdl_prefetch_bytes(), W_LINE=128 // w.element_size(),
        RMS_ROWS=rms_rows, RMS_K=rms_k, SPLIT_P2=triton.next_power_of_2(split), num_warps=warps,
        **({"launch_pdl": True} if pdl else {}))
    return out


def finish_partials(partials: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                    residual: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The split-K epilogue: the (SPLIT_K, M, N) fp32 partial sums summed in a fixed order, then scale, bias and
    residual in fp32, then the cast."""
    y = partials.sum(0)
    if scale is not None:
        y = y * scale.float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           rms_eps: float | None = None, residual: torch.Tensor | None = None,
           split_counters: torch.Tensor | None = None, glu: str | None = None,
           att: UnifiedParts | None = None) -> torch.Tensor:
    """``F.linear`` for (..., K) activations and a float (N, K) weight; (..., N) in x's dtype; ``rms_eps``,
    ``residual``, ``glu`` and ``att`` as :func:`kernel.reference.linear` (the rows' sums of squares beside the
    matmul's weight loop, rstd and the add in its epilogue; the SwiGLU of a fused gate/up result in the gemv
    kernel's epilogue, else by torch after; one row of a unified attention's accumulators read by the gemv kernel
    where the card's table has the shape, else the attention output materialised first); ``split_counters`` as
    :func:`skinny_mm` (a split K summed in the kernel)."""
    return _matmul(x, weight, None, bias, rms_eps, residual, glu, pdl=False, counters=split_counters, att=att)


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None, *, rms_eps: float | None = None,
                residual: torch.Tensor | None = None, glu: str | None = None,
                att: UnifiedParts | None = None) -> torch.Tensor:
    """(..., K) activations, (N, K) int8 weights, (N,) scales -> (..., N) in x's dtype; ``rms_eps``, ``residual``,
    ``glu`` and ``att`` as :func:`linear` (fused: rstd from the rows' sums of squares beside the weight loop, the
    add in the epilogue)."""
    return _matmul(x, weight_int8, scale, bias, rms_eps, residual, glu, pdl=False, counters=None, att=att)


def linear_pdl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               rms_eps: float | None = None, residual: torch.Tensor | None = None,
               split_counters: torch.Tensor | None = None, glu: str | None = None,
               att: UnifiedParts | None = None) -> torch.Tensor:
    """:func:`linear` launched with programmatic dependent launch (sm90+): an opaque op to torch.compile
    (``torch.ops.lmstack.skinny_pdl``), so Triton's own launcher starts it while the kernel before it drains, with
    its weights prefetched to L2 meanwhile (:func:`skinny_mm`, ``pdl``). One row of a weight shape the card's gemv
    table has goes to the gemv kernel instead (``kernel.triton.gemv``: ``torch.ops.lmstack.gemv_pdl`` where the
    table's PDL field is 1, its first weight block loaded before the wait; else the plain gemv). The weights must not
    be written by the kernel just before (a decode step's are frozen). One row of a shape the table lacks takes
    the plain skinny matmul (with PDL it never measured faster). ``split_counters`` is not used: the op declares no
    mutation, so a split K is summed after it, in the graph."""
    return _matmul(x, weight, None, bias, rms_eps, residual, glu, pdl=True, counters=None, att=att)


def int8_linear_pdl(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None, *, rms_eps: float | None = None,
                    residual: torch.Tensor | None = None, glu: str | None = None,
                    att: UnifiedParts | None = None) -> torch.Tensor:
    """:func:`int8_linear` launched with programmatic dependent launch (as :func:`linear_pdl`)."""
    return _matmul(x, weight_int8, scale, bias, rms_eps, residual, glu, pdl=True, counters=None, att=att)


def _gemv_tiles(x2: torch.Tensor, w: torch.Tensor, glu: bool, att: bool = False) -> tuple[int, ...]:
    """The gemv kernel's measured tiles for one activation row times w on this card, () for the skinny matmul."""
    if x2.shape[0] != 1:
        return ()
    return choose_gemv_tiles(w.shape[0], w.shape[1], w.dtype, device_info(x2)[1], glu, att)


def _matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
            rms_eps: float | None, residual: torch.Tensor | None, glu: str | None, pdl: bool,
            counters: torch.Tensor | None, att: UnifiedParts | None = None) -> torch.Tensor:
    """linear (``scale`` None, float weights) and int8_linear: up to MAX_ROWS rows here, more by the reference.
    ``att``: x is a unified attention's accumulators; one row of them goes to the gemv kernel where the card's table
    has the weight's shape, else the attention output is materialised and takes the usual path."""
    N, K = weight.shape
    op = "linear" if scale is None else "int8_linear"
    check_glu(glu, residual, N, op)
    if att is not None:
        check_att(x, att, op, rms_eps, glu)
        y = _att_gemv(weight, scale, bias, residual, att, pdl)
        if y is not None:
            return y
        x = att.output()
    x2 = _rows(x)
    if x2.shape[0] > MAX_ROWS or (scale is None and weight.dtype != x.dtype):
        if scale is None:
            return _reference(x, weight, bias, rms_eps=rms_eps, residual=residual, glu=glu)
        return _int8_reference(x, weight, scale, bias, rms_eps=rms_eps, residual=residual, glu=glu)
    res = None if residual is None else residual.reshape(x2.shape[0], N)
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    gemv_tiles = _gemv_tiles(x2, w, glu is not None)
    if gemv_tiles:  # one row, and the card's table has a measured gemv tile for this weight (launched with PDL where
        # the table says so and the caller asked for it); a SwiGLU in its epilogue
        y = (torch.ops.lmstack.gemv_pdl(x2, w, scale, bias, rms_eps, res, *gemv_tiles[:3], glu is not None,
                                        gemv_tiles[4] if len(gemv_tiles) > 4 else 0)
             if pdl and gemv_tiles[3]
             else gemv(x2, w, scale, bias, out_dtype=x.dtype, config=gemv_tiles, rms_eps=rms_eps, residual=res,
                       glu=glu is not None))
    elif pdl and x2.shape[0] > 1:  # the opaque op ends at the kernel: a split-K sum stays in the graph, where
        # inductor fuses it (one row of a shape without a gemv entry takes the plain skinny matmul below: launched
        # with PDL it never measured faster, and a decode loop routes every Linear here once any shape chains)
        y = torch.ops.lmstack.skinny_pdl(x2, w, scale, bias, rms_eps, res)
        y = glu_output(y if y.dim() == 2 else finish_partials(y, scale, bias, res, x.dtype), glu, None, op)
    else:
        y = glu_output(skinny_mm(x2, w, scale, bias, rms_eps=rms_eps, residual=res,
                                 split_counters=counters if scale is None else None), glu, None, op)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _att_gemv(weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
              residual: torch.Tensor | None, att: UnifiedParts, pdl: bool) -> torch.Tensor | None:
    """One row of a unified attention's accumulators times the weight by the gemv kernel, reading the attention
    output as it loads x (``gemv``'s ``att``), where the card's table has a tile for the weight; else None."""
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    tiles = _gemv_tiles(att.x, w, False, att=True) if att.x.dtype == torch.float32 else ()
    if not tiles or (scale is None and weight.dtype != att.dtype):
        return None
    res = None if residual is None else residual.reshape(1, weight.shape[0])
    if pdl and tiles[3]:
        return torch.ops.lmstack.gemv_pdl(att.x, w, scale, bias, None, res, *tiles[:3], False,
                                          tiles[4] if len(tiles) > 4 else 0, att.acc, att.m, att.l, att.dtype)
    return gemv(att.x, w, scale, bias, out_dtype=att.dtype, config=tiles, residual=res,
                att=(att.acc, att.m, att.l))


@torch.library.custom_op("lmstack::skinny_pdl", mutates_args=())
def _skinny_pdl(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                rms_eps: float | None, residual: torch.Tensor | None) -> torch.Tensor:
    """skinny_partials(pdl=True) as an op torch.compile does not trace into: a Triton launch option such as PDL
    only survives when Triton's launcher, not inductor's, starts the kernel. (M, N) when K is not split, else the
    (SPLIT_K, M, N) fp32 partial sums (:func:`finish_partials`, outside the op)."""
    return skinny_partials(x, w, scale, bias, rms_eps=rms_eps, residual=residual, pdl=True)


@_skinny_pdl.register_fake
def _skinny_pdl_shape(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                      rms_eps: float | None, residual: torch.Tensor | None) -> torch.Tensor:
    split = skinny_plan(x, w, rms_eps=rms_eps)[2]
    if split == 1:
        return x.new_empty((x.shape[0], w.shape[0]))
    return x.new_empty((split, x.shape[0], w.shape[0]), dtype=torch.float32)
