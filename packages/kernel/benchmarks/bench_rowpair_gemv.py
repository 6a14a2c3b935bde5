"""Would int8 weights stored two rows to a 16-bit word make the one-row gemv faster? A prototype, timed against the
shipped gemv (``kernel.triton.gemv``) at the ~1.1B Llama decode shapes, int8 weight-only, one bf16 activation row.

    python packages/kernel/benchmarks/bench_rowpair_gemv.py --out rowpair.json       # on a GPU
    TRITON_INTERPRET=1 python packages/kernel/benchmarks/bench_rowpair_gemv.py --check  # values only, small shapes

Why. Triton gives a load of 16-byte vectors to each thread: 16 int8 weights of one row, but only 8 bf16 values of
x. The shipped int8 gemv's products need x in the weights' layout, so at every K step of a multi-step row x goes
through shared memory behind CTA-wide barriers. Its int8 down projection (K 5,632: three steps) moves 11.5 MB at
~2.2-2.5 TB/s, where bf16's moves 23 MB at ~3.4. Loading the weights 8 bytes a vector instead (kernel 0.20's
``WVEC``, x's own layout) removed the shuffle but doubled the load instructions, and lost for three-step rows
(docs/benchmarks.md, runs CA-CB).

The prototype keeps 16-byte weight vectors and needs no shuffle. Rows 2i and 2i+1 are interleaved column by column
into one int16 matrix (N/2, K): a word's low byte is row 2i's weight and its high byte row 2i+1's. A 16-byte vector
then holds 8 columns of two rows, the same 8 columns as the thread's 16 bytes of x. Four weights (a 32-bit word:
two columns of two rows) become two packed fp16 pairs by two byte permutes, as the shipped ``f16`` path does: one
pair per row, each multiplied by the same two x values. For the fused gate/up projection the pairs are (gate j,
up j), so the SwiGLU needs no shuffle either.

Each call reads its own copy of the weights (rotated past the L2), captured in one CUDA graph, and is launched the
way decode launches it (chained by PDL on sm90+). Also timed: the MLP (gate/up, then down with the residual) of 22
layers, shipped against row-pair, and mixed (the shipped gate/up, row-pair down). A benchmark, not a test: the
figures go to docs/benchmarks.md.

Found (H200, runs CY-CZ): down 1.08x the shipped gemv, q/k/v, o and gate/up 0.94-0.97x; 22 layers' MLP with
row-pair down 2.2% faster (~1.2% of an int8 decode token). Not integrated: too small a gain for a second int8
weight layout through compress's storage and the registry's int8 ops. Software-pipelined (STAGES 2-3, run DC):
slower for every shape. At near-zero widths (``--dims``, run DD) two dependent launches still take ~4.3 us a
layer; chained by flags instead of PDL's grid wait (run DE), slower (15.2-15.4 us a layer against 12.5).
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import torch
import triton
import triton.language as tl
from bench_decode_kernels import (  # beside this script
    MATRICES,
    RMS_EPS,
    bench_rotated,
    call_product,
    decode_call,
    one_row_case,
    rotations,
)
from bench_kernels import checked_gpu, write_json

from kernel.triton import gemv as gemv_mod
from kernel.triton._device import pdl_capable
from kernel.triton._pdl import pdl_enter

X_SCALE = gemv_mod.F16_X_SCALE  # x's scale before its fp16 products, as the shipped f16 path does
# a 32-bit word of two int16 (columns c, c+1; each row 2i in its low byte, 2i+1 in its high byte) -> two fp16 pairs,
# by the shipped gemv's conversion with other bytes selected: bytes 0, 2 (row 2i at c, c+1) and 1, 3 (row 2i+1)
PAIR_PTX = tl.constexpr(gemv_mod.i8_f16_pairs_ptx("0x4240", "0x4341"))
# the decode projections the shipped tuner times (bench_decode_kernels), (N, K); gate/up with its SwiGLU
SHAPES = {name: (N, K) for name, N, K in MATRICES if name != "lm_head"}
PAIRS = (1, 2, 4, 8, 16)
BLOCK_K = (512, 1024, 2048, 4096, 8192)
WARPS = (2, 4, 8, 16)


@triton.jit
def _split(w, ASM: tl.constexpr):
    """An int16 block of row pairs -> (row 2i's weights, row 2i+1's), fp16, exactly. ASM: by PTX, four weights a
    32-bit word; else Triton's integer ops (which its interpreter runs)."""
    if ASM:
        return tl.inline_asm_elementwise(asm=PAIR_PTX, constraints="=r,=r,r", args=[w],
                                         dtype=(tl.float16, tl.float16), is_pure=True, pack=2)
    u = w.to(tl.uint16, bitcast=True)
    lo = (((u & 0xFF) ^ 0x80) | 0x6400).to(tl.float16, bitcast=True) - 1152.0
    hi = (((u >> 8) ^ 0x80) | 0x6400).to(tl.float16, bitcast=True) - 1152.0
    return lo, hi


@triton.jit
def _flag_wait(cnt_ptr, wait_slot, wait_count, ASM: tl.constexpr):
    """Spin until ``wait_count`` programs of the kernel before have counted in at ``cnt_ptr + wait_slot`` (one
    thread's acquire polls, with a short sleep between them on a GPU), then fence: their stores are visible."""
    if wait_slot >= 0:
        seen = tl.atomic_add(cnt_ptr + wait_slot, 0, sem="acquire", scope="gpu")
        while seen < wait_count:
            if ASM:
                tl.inline_asm_elementwise("nanosleep.u32 20; // $0 $1", "=r,r", [tl.arange(0, 1)], dtype=tl.int32,
                                          is_pure=False, pack=1)
            seen = tl.atomic_add(cnt_ptr + wait_slot, 0, sem="acquire", scope="gpu")
        if ASM:
            tl.inline_asm_elementwise("fence.acq_rel.gpu; // $0 $1", "=r,r", [tl.arange(0, 1)], dtype=tl.int32,
                                      is_pure=False, pack=1)
        tl.debug_barrier()


@triton.jit
def _rowpair(x_ptr, w_ptr, out_ptr, scale_ptr, res_ptr, N, K, rms_eps, PAIRS: tl.constexpr,
             BLOCK_K: tl.constexpr, PDL: tl.constexpr, ASM: tl.constexpr, RMS: tl.constexpr,
             HAS_RES: tl.constexpr, GLU: tl.constexpr, STAGES: tl.constexpr = 1, FLAGS: tl.constexpr = 0,
             XCACHE: tl.constexpr = "", cnt_ptr=None, wait_slot=-1, wait_count=0, sig_slot=0):
    pid = tl.program_id(0)
    i = pid * PAIRS + tl.arange(0, PAIRS)  # pair rows: weight rows 2i and 2i + 1 (GLU: gate i and up i)
    i_ok = i < N // 2
    kk = tl.arange(0, BLOCK_K)
    row = w_ptr + i[:, None].to(tl.int64) * K
    w = tl.load(row + kk[None, :], mask=i_ok[:, None] & (kk < K)[None, :], other=0)
    if GLU:
        s0 = tl.load(scale_ptr + i, mask=i_ok, other=0.0).to(tl.float32)
        s1 = tl.load(scale_ptr + N // 2 + i, mask=i_ok, other=0.0).to(tl.float32)
    else:
        s0 = tl.load(scale_ptr + 2 * i, mask=i_ok, other=0.0).to(tl.float32)
        s1 = tl.load(scale_ptr + 2 * i + 1, mask=i_ok, other=0.0).to(tl.float32)
    if FLAGS:  # the kernel before counts its programs in at a flag: spin on it instead of waiting for its grid
        if PDL and FLAGS == 1:
            tl.extra.cuda.gdc_launch_dependents()  # the next kernel may launch now (and spin on this one's flag)
        _flag_wait(cnt_ptr, wait_slot, wait_count, ASM)
        if PDL and FLAGS == 2:
            tl.extra.cuda.gdc_launch_dependents()
    else:
        pdl_enter(PDL)  # the weights and scales above are in flight while the kernel before drains
    x = tl.load(x_ptr + kk, mask=kk < K, other=0.0, cache_modifier=XCACHE).to(tl.float32)
    r0 = tl.zeros((PAIRS,), tl.float32)
    r1 = tl.zeros((PAIRS,), tl.float32)
    if HAS_RES:
        r0 = tl.load(res_ptr + 2 * i, mask=i_ok, other=0.0, cache_modifier=XCACHE).to(tl.float32)
        r1 = tl.load(res_ptr + 2 * i + 1, mask=i_ok, other=0.0, cache_modifier=XCACHE).to(tl.float32)
    ss = x * x
    xs = (x * X_SCALE).to(tl.float16)[None, :]
    lo, hi = _split(w, ASM)
    acc0 = lo * xs
    acc1 = hi * xs
    for k0 in tl.range(BLOCK_K, K, BLOCK_K, num_stages=STAGES):  # STAGES > 1: Triton's software pipeline
        col = k0 + kk
        w = tl.load(row + col[None, :], mask=i_ok[:, None] & (col < K)[None, :], other=0)
        x = tl.load(x_ptr + col, mask=col < K, other=0.0, cache_modifier=XCACHE).to(tl.float32)
        ss += x * x
        xs = (x * X_SCALE).to(tl.float16)[None, :]
        lo, hi = _split(w, ASM)
        acc0 += lo * xs
        acc1 += hi * xs
    y0 = tl.sum(acc0.to(tl.float32), 1) * (1.0 / X_SCALE)
    y1 = tl.sum(acc1.to(tl.float32), 1) * (1.0 / X_SCALE)
    if RMS:  # x RMS-normalised (its weight folded into w): rstd (x @ w.T)
        rstd = tl.rsqrt(tl.sum(ss, 0) / K + rms_eps)
        y0 = y0 * rstd
        y1 = y1 * rstd
    y0 = y0 * s0
    y1 = y1 * s1
    odt = out_ptr.dtype.element_ty
    if GLU:  # silu(gate) * up, each projection rounded to the output dtype first (as the shipped gemv does)
        gate = y0.to(odt).to(tl.float32)
        up = y1.to(odt).to(tl.float32)
        tl.store(out_ptr + i, (gate * tl.sigmoid(gate) * up).to(odt), mask=i_ok)
    else:
        tl.store(out_ptr + 2 * i, (y0 + r0).to(odt), mask=i_ok)
        tl.store(out_ptr + 2 * i + 1, (y1 + r1).to(odt), mask=i_ok)
    if FLAGS:  # every thread's stores, then this program counts in (release): the next kernel's flag
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr + sig_slot, 1, sem="release", scope="gpu")


def interleave(w: torch.Tensor, glu: bool = False) -> torch.Tensor:
    """An int8 (N, K) weight as int16 (N / 2, K): word (i, c) holds row 2i's weight at column c in its low byte and
    row 2i + 1's in its high byte. ``glu`` (a fused [gate | up] weight): gate row i and up row i instead."""
    if w.dtype != torch.int8 or w.dim() != 2 or w.shape[0] % 2:
        raise ValueError(f"interleave takes an int8 (N, K) weight with N even, got {w.dtype} {tuple(w.shape)}")
    half = w.shape[0] // 2
    first, second = (w[:half], w[half:]) if glu else (w[0::2], w[1::2])
    return torch.stack([first, second], -1).contiguous().view(torch.int16).reshape(half, w.shape[1])


def rowpair_gemv(x: torch.Tensor, w16: torch.Tensor, scale: torch.Tensor, *, config: tuple[int, ...],
                 residual: torch.Tensor | None = None, rms_eps: float | None = None, glu: bool = False,
                 pdl: bool = False, flags: tuple | None = None) -> torch.Tensor:
    """x (1, K) @ w.T times the per-row ``scale`` (N,), for w given as :func:`interleave` wrote it; ``rms_eps``: x
    RMS-normalised first; ``residual`` (1, N) added; ``glu``: silu(gate) * up, (1, N / 2). ``config``: (PAIRS,
    BLOCK_K, num_warps), powers of two, and optionally the K loop's software-pipeline stages (Triton's
    ``num_stages``: asynchronous copies of later steps through shared memory; 1, the default, none).
    ``flags`` (an experiment): (mode, counters, wait_slot, wait_count, sig_slot): instead of waiting for the kernel
    before to finish (PDL's grid dependency), spin until ``wait_count`` of its programs have counted in at
    ``counters[wait_slot]`` (none when -1), and count this kernel's programs in at ``counters[sig_slot]``; mode 1
    lets the next kernel launch before the spin, 2 after it. See :func:`programs`."""
    pairs, block_k, warps, stages = (*config, 1) if len(config) == 3 else config
    half, K = w16.shape
    out = torch.empty(1, half if glu else 2 * half, device=x.device, dtype=x.dtype)
    asm = x.device.type == "cuda"  # inline PTX on a GPU; Triton's integer ops under the interpreter
    launch = {"launch_pdl": True} if pdl and pdl_capable(x) else {}
    mode, cnt, wait_slot, wait_count, sig_slot = flags or (0, None, -1, 0, 0)
    _rowpair[(programs(w16, config),)](
        x, w16, out, scale, residual if residual is not None else out, 2 * half, K,
        rms_eps if rms_eps is not None else 0.0, PAIRS=pairs, BLOCK_K=block_k, PDL=bool(launch), ASM=asm,
        RMS=rms_eps is not None, HAS_RES=residual is not None, GLU=glu, STAGES=stages, FLAGS=mode,
        XCACHE=".cg" if mode else "", cnt_ptr=cnt, wait_slot=wait_slot, wait_count=wait_count, sig_slot=sig_slot,
        num_warps=warps, **launch)
    return out


def programs(w16: torch.Tensor, config: tuple[int, ...]) -> int:
    """How many programs :func:`rowpair_gemv` launches for ``w16`` at ``config``."""
    return triton.cdiv(w16.shape[0], config[0])


def case(name: str, N: int, K: int, g: torch.Generator, device: str, dtype: torch.dtype):
    """bench_decode_kernels' int8 row and (N, K) weight, called as a decode step calls projection ``name``
    (``decode_call``: a folded RMSNorm or a residual; gate/up also with its SwiGLU): (x, w, scale, the call's
    keywords, their fp32 product by ``kernel.reference``)."""
    x, w, (_, _, scale), _, _ = one_row_case(N, K, True, g, device, dtype)
    extra = decode_call(name, N, g, device, dtype) | ({"glu": "silu"} if name == "gate_up" else {})
    return x, w, scale, extra, call_product((x, w, scale), extra)


def check(device: str) -> float:
    """The prototype against ``kernel.reference``'s int8_linear on small shapes, in every call form (q/k/v's
    folded norm, o's residual, gate/up's norm and SwiGLU), with several K steps and a partial last one (K 320 in
    steps of 128) and a partial last row block: the largest error over the largest output."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for name in ("qkv", "o", "gate_up"):
        x, w, scale, extra, want = case(name, 36, 320, g, device, dtype)
        got = _call(rowpair_gemv, (4, 128, 2), extra, False)(x, interleave(w, "glu" in extra), scale,
                                                              extra.get("residual")).float()
        worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    return worst


def _admits(pairs: int, block_k: int, warps: int, K: int) -> bool:
    """Tiles worth timing: 32-128 bytes of weights a thread a step (16-byte vectors, as the shipped tuner's), no
    block wider than K's next power of two."""
    per_thread = pairs * block_k * 2 // (32 * warps)
    return 32 <= per_thread <= 128 and block_k <= max(1 << (K - 1).bit_length(), 512)


def _call(kernel, config: tuple, extra: dict, pdl: bool):
    """``kernel`` (the shipped gemv or :func:`rowpair_gemv`) called with :func:`case`'s keywords ``extra`` (the
    residual taken as an argument, so each rotated set brings its own), over (x, w, scale[, residual])."""
    eps, glu = extra.get("rms_eps"), "glu" in extra

    def fn(x, w, scale, residual=None):
        return kernel(x, w, scale, config=config, residual=residual, rms_eps=eps, glu=glu, pdl=pdl)
    return fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--check", action="store_true", help="only check the prototype's values on small shapes")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, of %(default)s")
    p.add_argument("--layers", type=int, default=22, help="MLP chain length (0: no chain timing)")
    p.add_argument("--dims", metavar="D,F", help="the MLP's hidden and FFN widths instead of the 1.1B shape's "
                   "(gate/up 2F x D, down D x F): small ones price two dependent launches with next to no bytes")
    p.add_argument("--resident", action="store_true",
                   help="the MLP chain reuses one layer's weights (L2-resident after the first: latency, not bytes)")
    p.add_argument("--tiles", action="append", default=[], metavar="NAME=PAIRS,BLOCK_K,WARPS[,STAGES]",
                   help="time the prototype for shape NAME at these tiles only (no sweep); repeatable")
    a = p.parse_args()
    shapes = a.shapes.split(",")
    unknown = [name for name in shapes if name not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {unknown}; valid: {', '.join(SHAPES)}")
    if a.layers < 0:
        p.error(f"--layers: expected 0 (no chain) or a positive count, got {a.layers}")
    if a.dims:
        try:
            D, F = (int(v) for v in a.dims.split(","))
        except ValueError:
            D = F = 0
        if D <= 0 or F <= 0:
            p.error(f"--dims: expected two positive widths D,F, got {a.dims!r}")
        SHAPES.update(gate_up=(2 * F, D), down=(D, F))
    fixed = {}
    for item in a.tiles:
        name, _, vals = item.partition("=")
        try:
            tiles = tuple(int(v) for v in vals.split(","))
        except ValueError:
            tiles = ()
        if name not in shapes or len(tiles) not in (3, 4):
            p.error(f"--tiles: expected NAME=PAIRS,BLOCK_K,WARPS[,STAGES] with NAME one of --shapes "
                    f"({', '.join(shapes)}), got {item!r}")
        fixed[name] = tiles
    err = checked_gpu("bench_rowpair_gemv", check, "row-pair gemv against the fp32 reference", a.check)
    if err is None:
        return
    run("cuda", shapes, a.layers, torch.bfloat16, a.out,
        {"check_error": err, "resident": a.resident, "dims": a.dims}, fixed, a.resident)


def run(device: str, shapes: list[str], layers: int, dtype: torch.dtype, out: str | None = None,
        extra: dict | None = None, fixed: dict[str, tuple[int, ...]] | None = None,
        resident: bool = False) -> dict:
    """Each of ``shapes`` (keys of :data:`SHAPES`): the shipped gemv at the card's table tile, and the prototype at
    every admitted tile, or at ``fixed[name]`` alone where given (its values checked first); then, with ``layers``
    and both MLP shapes timed, :func:`chain` at the prototype's best tiles (``resident``: one layer's weights for
    all). The results (with ``extra``) are written to ``out`` after every shape, so a run cut short keeps what it
    measured. (On a CPU, under the interpreter, the same steps run untimed in earnest: a dry run.)"""
    g = torch.Generator().manual_seed(1)
    card = torch.cuda.get_device_name() if device == "cuda" else device
    pdl = pdl_capable(torch.empty(0, device=device))
    results = {"card": card, "date": datetime.date.today().isoformat(), "pdl": pdl, **(extra or {}), "shapes": {},
               "chain_us_per_layer": {}}
    best: dict[str, tuple[int, ...]] = {}
    for name in shapes:
        N, K = SHAPES[name]
        x, w, scale, extra, want = case(name, N, K, g, device, dtype)
        res, glu = extra.get("residual"), "glu" in extra
        cfg = gemv_mod.choose_tiles(N, K, torch.int8, card, glu) or (4, 2048, 4, 1, 0)
        shipped = rotations((x, w, scale) + ((res,) if res is not None else ()), N * K, device)
        t_ship = bench_rotated(_call(gemv_mod.gemv, cfg, extra, pdl), shipped, device, replays=5) * 1e6
        pair_sets = rotations((x, interleave(w, glu), scale) + ((res,) if res is not None else ()), N * K, device)
        row = {"shipped": {"tiles": list(cfg), "us": round(t_ship, 2), "GBps": round(N * K / t_ship / 1e3)},
               "rowpair": {}}
        sweep = [fixed[name]] if fixed and name in fixed else itertools.product(PAIRS, BLOCK_K, WARPS)
        for tiles in sweep:
            if name not in (fixed or {}) and not _admits(*tiles, K):
                continue
            fn = _call(rowpair_gemv, tiles, extra, pdl)
            try:
                got = fn(*pair_sets[0]).float()
                e = ((got - want).abs().max() / want.abs().max()).item()
                if e > 2e-2:
                    row["rowpair"][str(list(tiles))] = f"wrong: {e:.2e}"
                    continue
                row["rowpair"][str(list(tiles))] = round(bench_rotated(fn, pair_sets, device, replays=5) * 1e6, 2)
            except Exception as exc:  # a tile that does not compile or fit is reported, not fatal
                row["rowpair"][str(list(tiles))] = f"{type(exc).__name__}: {str(exc)[:120]}"
        timed = {k: v for k, v in row["rowpair"].items() if isinstance(v, float)}
        if timed:
            top = min(timed, key=timed.get)
            best[name] = tuple(int(v) for v in top.strip("[]").split(","))
            row["best"] = {"tiles": top, "us": timed[top], "GBps": round(N * K / timed[top] / 1e3),
                           "vs_shipped": round(t_ship / timed[top], 3)}
        results["shapes"][name] = row
        if out:
            write_json(out, results)
        print(f"{name:8s} shipped {list(cfg)} {t_ship:6.2f} us; row-pair best {row.get('best')}", flush=True)
    if layers and {"gate_up", "down"} <= set(best):
        results["chain_us_per_layer"] = chain(device, layers, best, card, pdl, g, dtype, resident)
        if out:
            write_json(out, results)
    return results


def chain(device: str, layers: int, best: dict, card: str, pdl: bool, g: torch.Generator,
          dtype: torch.dtype, resident: bool = False) -> dict[str, float]:
    """The MLP of ``layers`` layers (gate/up with the SwiGLU, then down with the residual; their own weights, past
    the L2, or with ``resident`` all the first layer's, which the L2 then holds) in one CUDA graph: shipped,
    row-pair at the best tiles timed, mixed (the shipped gate/up, row-pair down), and row-pair chained by flags
    instead of grid dependencies (:func:`rowpair_gemv`'s ``flags``; "flags" lets each kernel launch the next before
    its spin, "flags late" after it), each twice in turn: us a layer."""
    F2, D = SHAPES["gate_up"]
    F = F2 // 2  # the SwiGLU's width: down's K
    mats = []
    for _ in range(1 if resident else layers):
        _, wgu, sgu, _, _ = case("gate_up", F2, D, g, device, dtype)
        _, wd, sd, _, _ = case("down", D, F, g, device, dtype)
        mats.append((wgu, sgu, wd, sd, interleave(wgu, True), interleave(wd)))
    mats = mats * layers if resident else mats
    x0 = torch.randn(1, D, generator=g).to(device, dtype)
    glu_cfg = gemv_mod.choose_tiles(F2, D, torch.int8, card, True) or (32, 512, 4, 1, 0)
    down_cfg = gemv_mod.choose_tiles(D, F, torch.int8, card) or (4, 2048, 8, 1, 0)

    def shipped():
        x = x0
        for wgu, sgu, wd, sd, _, _ in mats:
            h = gemv_mod.gemv(x, wgu, sgu, config=glu_cfg, rms_eps=RMS_EPS, glu=True, pdl=pdl)
            x = gemv_mod.gemv(h, wd, sd, config=down_cfg, residual=x, pdl=pdl)
        return x

    def rowpair():
        x = x0
        for _, sgu, _, sd, pgu, pd in mats:
            h = rowpair_gemv(x, pgu, sgu, config=best["gate_up"], rms_eps=RMS_EPS, glu=True, pdl=pdl)
            x = rowpair_gemv(h, pd, sd, config=best["down"], residual=x, pdl=pdl)
        return x

    def mixed():
        x = x0
        for wgu, sgu, _, sd, _, pd in mats:
            h = gemv_mod.gemv(x, wgu, sgu, config=glu_cfg, rms_eps=RMS_EPS, glu=True, pdl=pdl)
            x = rowpair_gemv(h, pd, sd, config=best["down"], residual=x, pdl=pdl)
        return x

    cnt = torch.zeros(2 * layers, dtype=torch.int32, device=device)
    n_gu, n_d = programs(mats[0][4], best["gate_up"]), programs(mats[0][5], best["down"])

    def flagged(mode: int):
        def fn():
            cnt.zero_()  # a plain kernel: the first flagged launch starts after it
            x = x0
            for j, (_, sgu, _, sd, pgu, pd) in enumerate(mats):
                h = rowpair_gemv(x, pgu, sgu, config=best["gate_up"], rms_eps=RMS_EPS, glu=True, pdl=pdl,
                                 flags=(mode, cnt, 2 * j - 1, n_d, 2 * j))
                x = rowpair_gemv(h, pd, sd, config=best["down"], residual=x, pdl=pdl,
                                 flags=(mode, cnt, 2 * j, n_gu, 2 * j + 1))
            return x
        return fn

    forms = {"shipped": shipped, "rowpair": rowpair, "mixed": mixed, "flags": flagged(1), "flags late": flagged(2)}
    want = shipped().float()
    out = {f"{name}_vs_shipped_error": ((fn().float() - want).abs().max() / want.abs().max()).item()
           for name, fn in forms.items() if name != "shipped"}
    for name, fn in [*forms.items(), *((f"{name} again", fn) for name, fn in forms.items())]:
        out[name] = round(bench_rotated(fn, [()], device, replays=30) / layers * 1e6, 3)
        print(f"MLP chain {name:14s} {out[name]:7.2f} us a layer", flush=True)
    return out


if __name__ == "__main__":
    main()
