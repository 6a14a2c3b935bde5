"""A whole Llama decode layer in one persistent Triton kernel (batch 1, folded norms): no kernel boundaries inside.

At batch 1 a decode layer is eight or so short kernels (q/k/v, attention and its combine, o, gate/up, silu, down
and its split-K sum), and each ~10 MB matmul sits near a ~6 us floor (docs/benchmarks.md). If that floor were
kernel launches and tails, one kernel for the whole layer would remove it: here one program per SM runs the
layer, the stages separated by grid-wide barriers instead of kernel boundaries (the "megakernel" of Hazy
Research's "Look Ma, No Bubbles", 2025, in Triton). Measured on an H200 it is slower than the per-op path (49.5 us
a layer against ~41 in a whole decode step): inside it a 10 MB stage still takes ~6 us, and attention's chain of
dependent memory round trips plus four barriers cost more than the launches they replace. So the registry offers
it by name only. The stages:

1. q/k/v: each program computes the RMS of the layer input x (the norm's weight folded into the projections,
   ``tensor.folded``) and its own contiguous rows of the fused q/k/v weight (rows split evenly over the programs).
2. attention: ``KVH x NS`` programs, one per (KV head, slot split), rotate q and the new key (RoPE), write the new
   key and value to the cache, attend (online softmax), and the last split of each KV head to finish combines
   its group (an acquire-release count, as in ``decode_attention``).
3. o: each program's rows of the output projection, plus the residual x -> h.
4. gate/up: the RMS of h, then each program's rows of gate and up together, ``silu(gate) * up`` in registers.
5. down: each program's rows of the down projection, plus the residual h -> the layer's output.

Between stages, every program writes, synchronises its threads, counts itself in with a release atomic, and
spins until every program has counted in (then an acquire), the pattern of CUTLASS's grid barrier; buffers written
by another program are read from L2 (``.cg``). The grid is exactly the SM count and every program must be
resident at once (a grid barrier with a program still waiting for an SM would never open): one program fits an SM
by construction, and the kernel must not share the GPU with a kernel that holds SMs (MPS or concurrent streams).

Under Triton's interpreter (CPU tests) the programs run one after another, so a barrier would wait forever there:
the stages are then launched one at a time (``SYNC=False``), kernel boundaries playing the barriers' part. The
arithmetic is the same as the unfused path's: each matmul accumulates in fp32 and rounds its output to the
activation dtype where that path does (q/k/v, the attention output, h, gate and up, the layer output).
Semantics: :func:`kernel.reference.decode_layer`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernel.reference import DECODE_LAYER_COUNTER_SLOTS
from kernel.triton.attention import _dot_mode
from kernel.triton.decode_attention import _attend
from specs.errors import ConfigError, ShapeError

BLOCK_S = 64  # key slots per attention step
TIME_SLOTS = tl.constexpr(10)  # TIMING: stage boundaries per program
MAX_SPLITS = 32
# counters (kernel.reference.decode_layer_counters): [0] the grid barrier, [1] programs done (the last resets both),
# [2 + kvh] attention's combine counts
COUNTER_SLOTS = tl.constexpr(DECODE_LAYER_COUNTER_SLOTS)


@triton.jit
def _grid_sync(cnt_ptr, target, POLL_ONE: tl.constexpr):
    """Wait until ``target`` arrivals (this program's included) have been counted at ``cnt_ptr``. POLL_ONE: one
    thread per program polls with acquire loads (fewer requests on the counter's L2 line); else every thread
    spins on volatile loads and one acquire follows."""
    tl.debug_barrier()  # every thread's stores of the stage before the count that publishes them
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
    if POLL_ONE:
        seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    else:
        seen = tl.load(cnt_ptr, volatile=True)
        while seen < target:
            seen = tl.load(cnt_ptr, volatile=True)
        # the other programs' stores, before any load below: an explicit fence, since an acquire add whose result
        # is unused may compile to a reduction without the acquire (Triton 3.6 does: red.global.gpu.add)
        one = tl.arange(0, 1)
        tl.inline_asm_elementwise("fence.acq_rel.gpu; // $0 $1", "=r,r", [one], dtype=tl.int32, is_pure=False,
                                  pack=1)
    tl.debug_barrier()


@triton.jit
def _between_stages(cnt_ptr, times_ptr, pid, P, k, SYNC: tl.constexpr, POLL_ONE: tl.constexpr,
                    TIMING: tl.constexpr):
    """The k-th grid barrier (SYNC), with this program's clock before and after it (TIMING: slots 2k-1, 2k)."""
    if TIMING:
        _stamp(times_ptr, pid, 2 * k - 1)
    if SYNC:
        _grid_sync(cnt_ptr, k * P, POLL_ONE)
    if TIMING:
        _stamp(times_ptr, pid, 2 * k)


@triton.jit
def _mine(pid, P, N, INTERLEAVE: tl.constexpr):
    """This program's rows of N as (first, step, count): a contiguous block (N split evenly over the programs), or
    with INTERLEAVE every P-th row from ``pid`` (at each step the programs read neighbouring rows)."""
    if INTERLEAVE:
        return pid, P, tl.cdiv(tl.maximum(N - pid, 0), P)
    lo = pid * N // P
    return lo, 1, (pid + 1) * N // P - lo


@triton.jit
def _stamp(times_ptr, pid, slot):
    """The SM's cycle counter into ``times[pid, slot]`` (TIMING: where a program's time goes, per stage)."""
    one = tl.arange(0, 1)
    t = tl.inline_asm_elementwise("mov.u64 $0, %clock64; // $1", "=l,r", [one], dtype=tl.int64, is_pure=False,
                                  pack=1)
    tl.store(times_ptr + pid * TIME_SLOTS + slot + one, t)


@triton.jit
def _matvec(x_ptr, w_ptr, rows, rows_ok, K, stride_w, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
            STAGES: tl.constexpr, UPCAST: tl.constexpr):
    """(BLOCK_R,) fp32: ``w[rows] @ x`` over K, x read from L2. A 16-row ``tl.dot`` whose first row is x, so
    Triton's pipeliner streams the weight tiles through shared memory STAGES deep."""
    m = tl.arange(0, 16)
    acc = tl.zeros((16, BLOCK_R), tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_ptr + m[:, None] * 0 + k[None, :], mask=(m == 0)[:, None] & k_ok[None, :], other=0.0,
                    cache_modifier=".cg")
        w = tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_w + k[None, :], mask=rows_ok[:, None] & k_ok[None, :],
                    other=0.0)
        if UPCAST:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    return tl.sum(tl.where((m == 0)[:, None], acc, 0.0), 0)


@triton.jit
def _project(x_ptr, w_ptr, out_ptr, res_ptr, scale, pid, P, N, K, HAS_RES: tl.constexpr, INTERLEAVE: tl.constexpr,
             R: tl.constexpr, BK: tl.constexpr, ST: tl.constexpr, UPCAST: tl.constexpr):
    """This program's rows of ``out = scale * (w @ x) (+ res)`` for a (N, K) weight, R rows at a time."""
    first, step, count = _mine(pid, P, N, INTERLEAVE)
    for ib in range(0, count, R):
        i = ib + tl.arange(0, R)
        r = first + step * i
        y = _matvec(x_ptr, w_ptr, r, i < count, K, K, R, BK, ST, UPCAST) * scale
        if HAS_RES:  # (h is written by the other programs of this kernel: read from L2)
            y += tl.load(res_ptr + r, mask=i < count, other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(out_ptr + r, y.to(out_ptr.dtype.element_ty), mask=i < count)


@triton.jit
def _rstd(x_ptr, D, eps, BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    x = tl.load(x_ptr + d, mask=d < D, other=0.0, cache_modifier=".cg").to(tl.float32)
    # (inductor's launcher passes a Python float as fp64: the cast keeps the rsqrt in fp32)
    return tl.rsqrt((tl.sum(x * x, 0) / D + eps).to(tl.float32))


@triton.jit
def _layer(x_ptr, wqkv_ptr, wo_ptr, wgu_ptr, wd_ptr, kc_ptr, vc_ptr, lens_ptr, cos_ptr, sin_ptr,
           qkv_ptr, attn_ptr, h_ptr, act_ptr, out_ptr, pm_ptr, pl_ptr, pacc_ptr, cnt_ptr,
           times_ptr, stride_kh, stride_ks, stride_vh, stride_vs, eps1, eps2, scale, D, F, H, KVH, Dh, NS,
           FIRST: tl.constexpr, LAST: tl.constexpr, SYNC: tl.constexpr, POLL_ONE: tl.constexpr,
           INTERLEAVE: tl.constexpr, TIMING: tl.constexpr, UPCAST: tl.constexpr, DOT: tl.constexpr,
           BLOCK_D: tl.constexpr,
           BK_QKV: tl.constexpr, ST_QKV: tl.constexpr, BK_O: tl.constexpr, ST_O: tl.constexpr,
           BK_GU: tl.constexpr, ST_GU: tl.constexpr, BK_D: tl.constexpr, ST_D: tl.constexpr,
           R_QKV: tl.constexpr, R_O: tl.constexpr, R_GU: tl.constexpr, R_D: tl.constexpr,
           BLOCK_G: tl.constexpr, BLOCK_DH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    G = H // KVH
    HD = H * Dh
    NQKV = HD + 2 * KVH * Dh
    if TIMING:
        _stamp(times_ptr, pid, 0)
    if FIRST <= 0 and LAST >= 0:  # 1. q/k/v = rstd(x) * (x @ Wqkv'.T), its rows of them
        rstd = _rstd(x_ptr, D, eps1, BLOCK_D)
        _project(x_ptr, wqkv_ptr, qkv_ptr, x_ptr, rstd, pid, P, NQKV, D, False, INTERLEAVE, R_QKV, BK_QKV, ST_QKV,
                 UPCAST)
    _between_stages(cnt_ptr, times_ptr, pid, P, 1, SYNC, POLL_ONE, TIMING)
    if FIRST <= 1 and LAST >= 1:  # 2. attention over the cache, KVH x NS work items
        for work in range(pid, KVH * NS, P):  # decode_attention's split program (one row, no pages), its q,
            # new key and value from the q/k/v buffer (written by other programs: read from L2), its combine counts
            # after this kernel's own counters
            _attend(qkv_ptr, kc_ptr, vc_ptr, lens_ptr, lens_ptr, attn_ptr, pacc_ptr, pm_ptr, pl_ptr, qkv_ptr + HD,
                    qkv_ptr + HD + KVH * Dh, cos_ptr, sin_ptr, cnt_ptr + COUNTER_SLOTS, 0, Dh, 0, stride_kh,
                    stride_ks, 0, stride_vh, stride_vs, 0, 0, Dh, 0, Dh, 0, Dh, 0, scale, G, Dh, H, NS, KVH, 0, 0,
                    (work // NS).to(tl.int64), work % NS, False, 1, DOT, True, True, True, True, BLOCK_G, BLOCK_S,
                    BLOCK_DH, BLOCK_N, ".cg", False, False, False, pacc_ptr, pacc_ptr, 0, False)
    _between_stages(cnt_ptr, times_ptr, pid, P, 2, SYNC, POLL_ONE, TIMING)
    if FIRST <= 2 and LAST >= 2:  # 3. h = attn @ Wo.T + x, its rows
        _project(attn_ptr, wo_ptr, h_ptr, x_ptr, 1.0, pid, P, D, HD, True, INTERLEAVE, R_O, BK_O, ST_O, UPCAST)
    _between_stages(cnt_ptr, times_ptr, pid, P, 3, SYNC, POLL_ONE, TIMING)
    if FIRST <= 3 and LAST >= 3:  # 4. act = silu(gate) * up, gate and up = rstd(h) * (h @ W'.T), its columns
        rstd2 = _rstd(h_ptr, D, eps2, BLOCK_D)
        f_first, f_step, f_count = _mine(pid, P, F, INTERLEAVE)
        for ib in range(0, f_count, R_GU):
            i2 = tl.arange(0, 2 * R_GU)  # gate row j and up row F + j side by side: (j, gate), (j, up), ...
            j = f_first + f_step * (ib + i2 // 2)
            rows = j + (i2 % 2) * F
            y = _matvec(h_ptr, wgu_ptr, rows, (ib + i2 // 2) < f_count, D, D, 2 * R_GU, BK_GU, ST_GU, UPCAST) * rstd2
            y = y.to(act_ptr.dtype.element_ty).to(tl.float32)  # gate and up in the activation dtype, as unfused
            gate, up = tl.split(tl.reshape(y, (R_GU, 2)))
            i = ib + tl.arange(0, R_GU)
            act = gate / (1.0 + tl.exp(-gate)) * up
            tl.store(act_ptr + f_first + f_step * i, act.to(act_ptr.dtype.element_ty), mask=i < f_count)
    _between_stages(cnt_ptr, times_ptr, pid, P, 4, SYNC, POLL_ONE, TIMING)
    if FIRST <= 4 and LAST >= 4:  # 5. out = act @ Wd.T + h, its rows
        _project(act_ptr, wd_ptr, out_ptr, h_ptr, 1.0, pid, P, D, F, True, INTERLEAVE, R_D, BK_D, ST_D, UPCAST)
    if TIMING:
        _stamp(times_ptr, pid, 9)
    if SYNC:  # the last program out sets the counters back to zero for the next call
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + 1, 1, sem="acq_rel", scope="gpu")
        if done == P - 1:
            tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(cnt_ptr + 1, 0, sem="relaxed", scope="gpu")


def _rows_block(n: int, programs: int, lo: int) -> int:
    """A power-of-two row tile for ``n`` rows split over ``programs``: one tile per program where it fits."""
    return max(lo, min(64, triton.next_power_of_2(triton.cdiv(n, programs))))


def decode_layer(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, w_gate_up: torch.Tensor,
                 w_down: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, counters: torch.Tensor | None = None, *, n_heads: int,
                 eps_attn: float, eps_mlp: float, scale: float | None = None) -> torch.Tensor:
    """One folded Llama layer for one token (:func:`kernel.reference.decode_layer`: arguments, shapes, what it
    writes); returns the layer's output in x's shape and dtype. ``counters``: the zeroed workspace of
    :func:`kernel.reference.decode_layer_counters` (required here), left zeroed; calls sharing one must not run
    concurrently (a model's layers run one after another on one stream).

    An opaque op to torch.compile (``torch.ops.lmstack.decode_layer``, declared to write the caches and the
    counters): inductor cannot analyse a kernel with inline assembly, and would otherwise assume it writes every
    argument, weights included."""
    from kernel.reference import check_decode_layer

    if counters is None:
        raise ShapeError("decode_layer: the Triton kernel needs its counters workspace "
                         "(kernel.reference.decode_layer_counters(KVH))")
    check_decode_layer(x, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, lens, cos, sin, counters, n_heads)
    return torch.ops.lmstack.decode_layer(x, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, lens,
                                          cos.reshape(-1), sin.reshape(-1), counters, n_heads, float(eps_attn),
                                          float(eps_mlp), scale)


@torch.library.custom_op("lmstack::decode_layer", mutates_args=("k_cache", "v_cache", "counters"))
def _decode_layer_op(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, w_gate_up: torch.Tensor,
                     w_down: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, counters: torch.Tensor, n_heads: int, eps_attn: float,
                     eps_mlp: float, scale: float | None) -> torch.Tensor:
    return launch(x, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, lens, cos, sin, counters, n_heads=n_heads,
                  eps_attn=eps_attn, eps_mlp=eps_mlp, scale=scale, **options())


@_decode_layer_op.register_fake
def _decode_layer_shape(x, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, lens, cos, sin, counters, n_heads,
                        eps_attn, eps_mlp, scale):
    return torch.empty_like(x)


def num_splits(n_kv_heads: int, capacity: int, programs: int) -> int:
    """Attention's slot splits per KV head: one per BLOCK_S slots of the cache's capacity, at most one program
    each and MAX_SPLITS (from shapes only: a captured CUDA graph replays at any length)."""
    return max(1, min(triton.cdiv(capacity, BLOCK_S), programs // n_kv_heads, MAX_SPLITS))


OPTIONS_ENV = "LMSTACK_DECODE_LAYER"
_FLAGS = ("poll_one", "interleave", "staged")


def options() -> dict[str, bool]:
    """The op's launch options from ``$LMSTACK_DECODE_LAYER``, a comma-separated subset of poll_one, interleave
    and staged (:func:`launch`'s ``poll_one``, ``interleave`` and ``sync=False``); unset: none of them."""
    raw = os.environ.get(OPTIONS_ENV, "")
    flags = [f for f in raw.split(",") if f]
    bad = [f for f in flags if f not in _FLAGS]
    if bad:
        raise ConfigError(OPTIONS_ENV, f"unknown option(s) {bad}; valid: {', '.join(_FLAGS)}")
    return {"poll_one": "poll_one" in flags, "interleave": "interleave" in flags,
            "sync": False if "staged" in flags else None}


# each matmul stage streams its weights through shared memory in at most this many bytes (H100/H200: 227 KB)
SMEM_BYTES = 200_000
STAGES = 4


def matvec_tile(rows_tile: int, K: int, elem: int, smem: int = SMEM_BYTES, stages: int = STAGES) -> tuple[int, int]:
    """(BLOCK_K, stages) for a stage whose programs each hold ``rows_tile`` weight rows (a power of two) plus the
    16-row activation tile: the widest K step (64-1024 columns) whose ``stages`` buffers fit ``smem``, so each
    program keeps ``stages - 1`` steps of its rows in flight. Programs with few rows need wide steps: at 128
    columns a 16-row program had 12 KB in flight and the layer ran at 43% of the copy bandwidth (H200)."""
    per_column = (16 + rows_tile) * elem * stages
    bk = 64
    while bk * 2 <= 1024 and bk * 2 * per_column <= smem:
        bk *= 2
    return min(bk, max(64, triton.next_power_of_2(K))), stages


def launch(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
           k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           counters: torch.Tensor, *, n_heads: int, eps_attn: float, eps_mlp: float, scale: float | None = None,
           sync: bool | None = None, poll_one: bool = False, interleave: bool = False,
           times: torch.Tensor | None = None, smem: int = SMEM_BYTES, stages: int = STAGES,
           num_warps: int = 4) -> torch.Tensor:
    """The kernel launch behind :func:`decode_layer` (unchecked), with its options for benchmarks and tests:
    ``sync`` False launches the five stages as five kernels (always so off CUDA); ``poll_one``: one thread per
    program polls the barrier; ``interleave``: each program takes every P-th weight row instead of a block;
    ``times`` (int64, programs x TIME_SLOTS, CUDA only) receives each program's cycle counter at every stage
    boundary; ``smem``, ``stages``, ``num_warps``: the matmuls' tiles (:func:`matvec_tile`)."""
    from kernel.triton._device import device_info

    D, F, H, KVH, Dh, L = x.shape[-1], w_down.shape[1], n_heads, k_cache.shape[1], k_cache.shape[3], k_cache.shape[2]
    cuda = x.is_cuda
    sync = cuda if sync is None else (sync and cuda)
    P = device_info(x)[0]
    NS = num_splits(KVH, L, P)
    dt, dev = x.dtype, x.device
    HD = H * Dh
    qkv = torch.empty(HD + 2 * KVH * Dh, dtype=dt, device=dev)
    attn = torch.empty(HD, dtype=dt, device=dev)
    h = torch.empty(D, dtype=dt, device=dev)
    act = torch.empty(F, dtype=dt, device=dev)
    out = torch.empty(D, dtype=dt, device=dev)
    pm = torch.empty(H * NS, dtype=torch.float32, device=dev)
    pl = torch.empty(H * NS, dtype=torch.float32, device=dev)
    pacc = torch.empty(H * NS * Dh, dtype=torch.float32, device=dev)
    upcast = dt == torch.float32 or (dt == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    elem = x.element_size()
    r_qkv, r_o, r_gu, r_d = (_rows_block(HD + 2 * KVH * Dh, P, 16), _rows_block(D, P, 16), _rows_block(F, P, 8),
                             _rows_block(D, P, 16))
    (bk_qkv, st_qkv), (bk_o, st_o), (bk_gu, st_gu), (bk_d, st_d) = (
        matvec_tile(r, k, elem, smem, stages) for r, k in ((r_qkv, D), (r_o, HD), (2 * r_gu, D), (r_d, F)))
    kc, vc = k_cache[0], v_cache[0]  # (KVH, L, Dh)
    args = (x, w_qkv, w_o, w_gate_up, w_down, kc, vc, lens, cos, sin, qkv, attn, h, act, out, pm, pl, pacc, counters,
            times if times is not None else counters, kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
            eps_attn, eps_mlp, Dh ** -0.5 if scale is None else scale, D, F, H, KVH, Dh, NS)
    meta = dict(SYNC=sync, POLL_ONE=poll_one, INTERLEAVE=interleave, TIMING=times is not None and cuda,
                UPCAST=upcast, DOT=_dot_mode(dt), BLOCK_D=triton.next_power_of_2(D), BK_QKV=bk_qkv, ST_QKV=st_qkv,
                BK_O=bk_o, ST_O=st_o, BK_GU=bk_gu, ST_GU=st_gu, BK_D=bk_d, ST_D=st_d, R_QKV=r_qkv, R_O=r_o,
                R_GU=r_gu, R_D=r_d, BLOCK_G=max(16, triton.next_power_of_2(H // KVH)),
                BLOCK_DH=max(16, triton.next_power_of_2(Dh)), BLOCK_N=triton.next_power_of_2(NS), BLOCK_S=BLOCK_S,
                num_warps=num_warps)
    if sync:
        _layer[(P,)](*args, FIRST=0, LAST=4, **meta)
    else:
        for stage in range(5):
            _layer[(P,)](*args, FIRST=stage, LAST=stage, **meta)
    return out.view(x.shape)
