"""Decode-shaped inference kernels against the memory roofline: the bandwidth each implementation sustains.

    python packages/kernel/benchmarks/bench_decode_kernels.py --out decode_kernels.json          # on a GPU
    python packages/kernel/benchmarks/bench_decode_kernels.py --device cpu --rows 1              # references only

A decode step is bound by bytes: every weight matrix is read once per step and every cached key/value row once per
layer. For each op (``linear``, ``int8_linear``, ``decode_attention``) at the ~1.1B Llama decode shapes (the
layer's fused q/k/v, o, fused gate/up and down projections and the LM head; attention over 384 and 2048 cached
slots), every implementation the registry can serve here is timed the way a decode step runs it: many calls
captured in one CUDA graph (no launch overhead, which a 5-20 us kernel would otherwise be dominated by), each call
on its own copy of the inputs, with enough copies to exceed the L2 cache several times over so the bytes come from
HBM. Results are GB/s of the bytes a call must read, beside the device-to-device copy bandwidth measured in the same
run (bytes read + written); the max abs error against the fp32 reference is printed with each. A benchmark, not a
test: figures go to docs/benchmarks.md.

    python packages/kernel/benchmarks/bench_decode_kernels.py --tune-skinny tiles.json

times every candidate tile configuration of the ``triton_skinny`` matmul (block sizes, split-K, pipeline stages)
at each decode shape, bf16 and int8 weights, the same way, and writes the fastest per shape as a tile table for
this card (the format of ``kernel/triton/skinny_tiles.json``; ``$LMSTACK_SKINNY_TILES`` points the kernel at it).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
from typing import Any

import torch
from bench_kernels import check_device, write_json, write_results  # beside this script

from kernel import default_registry

# (name, N, K) of the ~1.1B Llama decode step: hidden 2048, 32 heads / 4 KV heads of 64, FFN 5632, vocab 32000
MATRICES = [("qkv", 2560, 2048), ("o", 2048, 2048), ("gate_up", 11264, 2048), ("down", 2048, 5632),
            ("lm_head", 32000, 2048)]
ATTENTION = [(1, 384), (1, 2048), (32, 384), (32, 2048)]  # (rows, cached slots)
H, KVH, DH = 32, 4, 64


ROTATE_BYTES = 512 << 20  # inputs rotated per timing: several times the L2 cache (50-60 MB on an H100/H200)


def bench(fn, device: str) -> float:
    """Median seconds of ``fn()`` (the copy bandwidth: one large call, nothing to hide)."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    from torch.utils import benchmark

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median


def bench_rotated(fn, arg_sets: list[tuple], device: str, replays: int = 10) -> float:
    """Median seconds per call of ``fn(*args)`` over ``arg_sets``, as a decode step runs it: on CUDA every call is
    captured once in one CUDA graph and the graph replayed (so no host launch time is counted), each call reading
    its own inputs (so weights come from HBM, not L2). On CPU: the first set, timed plainly."""
    if device != "cuda":
        return bench(lambda: fn(*arg_sets[0]), device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for args in arg_sets[:2]:  # compile/autotune outside the capture
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for args in arg_sets:
            fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(arg_sets))
    del graph
    return statistics.median(times)


def rotations(args: tuple, nbytes: int, device: str) -> list[tuple]:
    """``args`` and copies of it, enough that one pass over them reads about ROTATE_BYTES (2..256 sets)."""
    if device != "cuda":
        return [args]
    n = max(2, min(256, -(-ROTATE_BYTES // max(nbytes, 1))))
    return [args] + [tuple(t.clone() for t in args) for _ in range(n - 1)]


def copy_bandwidth(device: str) -> float:
    src = torch.empty(1 << (30 if device == "cuda" else 26), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench(lambda: dst.copy_(src), device)


def cases(rows: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    for name, N, K in MATRICES:
        x = torch.randn(rows, K, generator=g).to(device, dtype)
        w = (torch.randn(N, K, generator=g) / K ** 0.5).to(device, dtype)
        yield "linear", f"{name} {N}x{K}", (x, w), N * K * w.element_size()
        wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(device)
        s = (torch.rand(N, generator=g) / 127 / K ** 0.5).to(device, dtype)
        yield "int8_linear", f"{name} {N}x{K}", (x, wq, s), N * K + N * s.element_size()
    for B, L in ATTENTION:
        q = torch.randn(B, H, DH, generator=g).to(device, dtype)
        k = torch.randn(B, KVH, L, DH, generator=g).to(device, dtype)
        v = torch.randn(B, KVH, L, DH, generator=g).to(device, dtype)
        lens = torch.full((B,), L, dtype=torch.int64, device=device)
        yield "decode_attention", f"B={B} L={L}", (q, k, v, lens), 2 * k.numel() * k.element_size()


# How a decode step calls each projection by default (FastGenerator folds the RMSNorms, inference): the ones that read
# the residual stream normalise their input themselves, the ones that write it add the residual in their epilogue.
# The gemv tuner times each shape that way (the sum of squares each program computes, or the residual it reads).
DECODE_CALLS = {"qkv": "rms", "o": "residual", "gate_up": "rms", "down": "residual", "lm_head": "rms"}
RMS_EPS = 1e-5


def decode_call(name: str, N: int, g: torch.Generator, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The keywords a folded decode step passes with projection ``name`` (DECODE_CALLS): ``rms_eps``, or a
    ``residual`` (1, N); none for a name it does not list."""
    how = DECODE_CALLS.get(name)
    if how == "rms":
        return {"rms_eps": RMS_EPS}
    if how == "residual":
        return {"residual": torch.randn(1, N, generator=g).to(device, dtype)}
    return {}


def call_product(args: tuple, extra: dict[str, Any]) -> torch.Tensor:
    """The fp32 result of one_row_case's ``args`` called with ``extra`` (kernel.reference's linear / int8_linear)."""
    from kernel import reference as ref

    kw = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    if len(args) == 3:
        x, w, s = args
        return ref.int8_linear(x.float(), w, s.float(), **kw).float()
    x, w = args
    return ref.linear(x.float(), w.float(), **kw).float()


def one_row_case(N: int, K: int, int8: bool, g: torch.Generator, device: str, dtype: torch.dtype):
    """One activation row and an (N, K) weight (int8 with per-channel scales, or ``dtype``): (x, w, the matmul's
    arguments, the bytes a call reads, the fp32 result)."""
    x = torch.randn(1, K, generator=g).to(device, dtype)
    if int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(device)
        s = (torch.rand(N, generator=g) / 127 / K ** 0.5).to(device, dtype)
        return x, w, (x, w, s), N * K + N * s.element_size(), (x.float() @ w.float().T * s.float()).float()
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(device, dtype)
    return x, w, (x, w), N * K * w.element_size(), (x.float() @ w.float().T).float()


# Candidate tiles: (BLOCK_N, bytes of K per weight row per stage, NUM_STAGES, num_warps) x SPLIT_K
TUNE_BLOCK_N = (16, 32, 64)
TUNE_K_BYTES = (128, 256, 512)
TUNE_STAGES = (3, 5)
TUNE_WARPS = (4,)
TUNE_SPLITS = (1, 2, 4, 8)


def parse_tune_space(warps: str, stages: str, matrices: str | None, weights: str = "float,int8") -> dict[str, Any]:
    """The tuner's candidate space from the command line, refusing what could not be a tile (SystemExit naming it)."""
    def ints(flag: str, raw: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in raw.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(v <= 0 for v in values):
            raise SystemExit(f"error: {flag} expects comma-separated positive integers, got {raw!r}")
        return values

    names = [m[0] for m in MATRICES]
    chosen = None
    if matrices is not None:
        chosen = tuple(m.strip() for m in matrices.split(",") if m.strip())
        unknown = [m for m in chosen if m not in names]
        if unknown or not chosen:
            raise SystemExit(f"error: --tune-matrices: unknown {unknown or matrices!r}; valid: {', '.join(names)}")
    kinds = tuple(w.strip() for w in weights.split(",") if w.strip())
    if not kinds or any(w not in ("float", "int8") for w in kinds):
        raise SystemExit(f"error: --tune-weights expects float and/or int8, comma-separated, got {weights!r}")
    return {"warps": ints("--tune-warps", warps), "stages": ints("--tune-stages", stages), "matrices": chosen,
            "weights": kinds}


def tune_skinny(path: str, device: str, dtype: torch.dtype, *, warps: tuple[int, ...] = TUNE_WARPS,
                stages: tuple[int, ...] = TUNE_STAGES, matrices: tuple[str, ...] | None = None,
                weights: tuple[str, ...] = ("float", "int8")) -> None:
    """Time every tile candidate of ``kernel.triton.skinny`` per decode shape (bf16/fp16 and int8 weights, one
    activation row) and write the fastest per shape as this card's table (atomically), with the timings under
    ``_meta``. ``warps``/``stages`` widen the candidate space; ``matrices`` (names in MATRICES) and ``weights``
    limit the shapes. Float weights are timed as a decode step runs them: a split K summed by a second pass, or in
    the kernel under ``$LMSTACK_SPLIT_COMBINE=last`` (routed Linears then keep ``split_counters``); int8 always
    with the second pass (the int8 op takes no counters)."""
    from kernel.reference import linear_split_counters, split_combine_in_kernel
    from kernel.triton._device import device_info
    from kernel.triton.skinny import skinny_mm, tile_key, tiles

    g = torch.Generator().manual_seed(0)
    sms, card = device_info(torch.empty(0, device=device))
    best: dict[str, list[int]] = {}
    detail: dict[str, dict] = {}
    shapes = [m for m in MATRICES if matrices is None or m[0] in matrices]
    kinds = [w == "int8" for w in ("float", "int8") if w in weights]
    serial = split_combine_in_kernel()
    for (name, N, K), int8 in itertools.product(shapes, kinds):
        cnt = linear_split_counters(N, device) if serial and not int8 else None
        x, w, args, nbytes, want = one_row_case(N, K, int8, g, device, dtype)
        sets = rotations(args, nbytes, device)
        timings = {}
        default = tiles(N, K, w.element_size(), sms)
        candidates = [(block_n, k_bytes // w.element_size(), split, stages, warps)
                      for block_n, k_bytes, stages, warps, split in itertools.product(
                          TUNE_BLOCK_N, TUNE_K_BYTES, stages, warps, TUNE_SPLITS)
                      if K // split >= k_bytes // w.element_size()]
        for cfg in [default] + [c for c in candidates if c != default]:
            try:
                got = skinny_mm(*args, config=cfg, split_counters=cnt).float()
                if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
                    raise AssertionError(f"max abs diff {(got - want).abs().max().item():.3g}")
                t = bench_rotated(lambda *xs, cfg=cfg, cnt=cnt: skinny_mm(*xs, config=cfg, split_counters=cnt), sets,
                                  device, replays=5)
            except Exception as e:  # a tile that does not compile or fit shared memory here is not a candidate
                print(f"  skip {cfg}: {type(e).__name__}: {str(e)[:80]}")
                continue
            timings[str(list(cfg))] = t * 1e6
        default = list(default)
        key = tile_key(N, K, w.dtype)
        if not timings:
            raise SystemExit(f"error: no tile candidate ran for {key} (see the skip lines above); nothing written")
        winner = min(timings, key=timings.get)
        best[key] = json.loads(winner)
        t_best, t_default = timings[winner], timings.get(str(default))
        detail[key] = {"us": round(t_best, 2), "GBps": round(nbytes / t_best / 1e3, 1), "default": default,
                       "default_us": None if t_default is None else round(t_default, 2), "candidates": len(timings)}
        print(f"{key:18s} {name:8s} best {best[key]} {t_best:6.1f} us {nbytes / t_best / 1e3:7.0f} GB/s; default "
              f"{default} {t_default if t_default is None else round(t_default, 1)} us ({len(timings)} candidates)")
    table = {"_meta": {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "triton": __import__("triton").__version__,
                       "how": "bench_decode_kernels.py --tune-skinny" + (" (LMSTACK_SPLIT_COMBINE=last: float "
                                                                         "weights' split K summed in the kernel)"
                                                                         if serial else ""),
                       "detail": {card: detail}},
             card: best}
    write_json(path, table)
    print(f"wrote {path}")


# gemv candidates (kernel.triton.gemv): output columns per program, K per step, warps; kept where a thread's share of
# one weight block is 32-128 bytes (two to eight 16-byte loads in flight) and the block no wider than K's next power
# of two (K 2048 takes no half-empty 4096-wide block; the narrowest block is always allowed: :func:`_gemv_admits`).
# 16 and 32 rows: each K step moves x into the weight block's layout through shared memory (barriers included), once
# per program, whatever its rows (tuned that way, int8 decode ran level with the shipped tiles on an H200:
# docs/benchmarks.md run AJ). 4096 and 8192: a row block of the FFN's down projection (K 5632) in one or two steps,
# so a PDL-launched program has all or most of its weights in flight before it waits (for int8 on an H200 the
# 2048-wide [4, 2048, 8] stayed fastest, run BD)
TUNE_GEMV_ROWS = (1, 2, 4, 8, 16, 32)
TUNE_GEMV_BLOCK_K = (256, 512, 1024, 2048, 4096, 8192)
TUNE_GEMV_WARPS = (1, 2, 4, 8)
TUNE_GEMV_PER_SM = (0, 2, 4, 8, 16)  # 0: a program per row block; else a persistent grid of this many per SM
TUNE_GEMV_LAUNCH_TOP = 3  # the fastest tiles (a program per block) that are then timed launched every way


def _gemv_admits(rows: int, block_k: int, warps: int, K: int, elem: int, glu: bool) -> bool:
    """Whether the tuner times gemv tile (rows, block_k, warps) for a K-wide weight of ``elem``-byte elements: 32-128
    bytes of a weight block per thread, a block no wider than K's next power of two (or the narrowest candidate
    block), and even rows for the SwiGLU epilogue (``glu``)."""
    per_thread = rows * block_k * elem // (32 * warps)
    widest = max(1 << (K - 1).bit_length(), min(TUNE_GEMV_BLOCK_K))
    return 32 <= per_thread <= 128 and block_k <= widest and not (glu and rows % 2)


def _gemv_timings(gemv, args: tuple, sets: list[tuple], want: torch.Tensor, K: int, elem: int, device: str,
                  glu: bool, extra: dict[str, Any] | None = None, chained: bool = False) -> dict[str, float]:
    """us per call of every gemv tile candidate that computes ``want`` (``glu``: the SwiGLU epilogue, even ROWS;
    ``extra``: the call's folded-norm or residual keywords, :func:`decode_call`), a program per row block, launched
    plainly or (``chained``, where the device has PDL) chained by PDL."""
    extra = extra or {}
    timings = {}
    for rows, block_k, warps in itertools.product(TUNE_GEMV_ROWS, TUNE_GEMV_BLOCK_K, TUNE_GEMV_WARPS):
        if not _gemv_admits(rows, block_k, warps, K, elem, glu):
            continue
        cfg = (rows, block_k, warps)
        try:
            got = gemv(*args, config=cfg, glu=glu, **extra).float()
            if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
                raise AssertionError(f"max abs diff {(got - want).abs().max().item():.3g}")
            t = bench_rotated(lambda x_, w_, s_=None, c=cfg: gemv(x_, w_, s_, config=c, glu=glu, pdl=chained,
                                                                   **extra), sets, device, replays=5)
        except Exception as e:  # a tile that does not compile here is not a candidate
            print(f"  skip {cfg}: {type(e).__name__}: {str(e)[:80]}")
            continue
        timings[str(list(cfg))] = t * 1e6
    return timings


def tune_gemv(path: str, device: str, dtype: torch.dtype, *, matrices: tuple[str, ...] | None = None,
              weights: tuple[str, ...] = ("float", "int8"), launch_top: int = TUNE_GEMV_LAUNCH_TOP,
              rank: str = "plain") -> None:
    """Time every gemv tile candidate per decode shape (one activation row) and, in the same run, the skinny
    matmul's table tile for it; then, on sm90+, the best gemv tile and the skinny tile chained by programmatic
    dependent launch. Write this card's gemv table (atomically) with an entry only where the best gemv tile beats
    the skinny tile (elsewhere the skinny matmul keeps the shape), its PDL field 1 where the chained gemv beat the
    plain one (and PER_SM where a persistent grid of that many programs per SM beat a program per row block), all
    timings under ``_meta``. The gate/up shapes also get a ``"<shape> glu"`` entry: the best tile with the SwiGLU in
    its epilogue (``FastGenerator(fuse_swiglu=True)``), launched by the same rule. Every shape is called as a folded
    decode step calls it (:data:`DECODE_CALLS`: the folded norm or the residual), the skinny matmul too.
    ``rank``: how every candidate is first timed, a program per block launched "plain" or "chained" by PDL (the
    way a decode step launches it; plain where the device has no PDL); the ``launch_top`` fastest are then timed
    every way."""
    from kernel.reference import swiglu
    from kernel.triton._device import device_info, pdl_capable
    from kernel.triton.gemv import gemv, int8_mode
    from kernel.triton.gemv import tile_key as gemv_key
    from kernel.triton.skinny import skinny_mm, skinny_plan

    g = torch.Generator().manual_seed(0)
    _, card = device_info(torch.empty(0, device=device))
    best: dict[str, list[int]] = {}
    detail: dict[str, dict] = {}
    shapes = [m for m in MATRICES if matrices is None or m[0] in matrices]
    kinds = [w == "int8" for w in ("float", "int8") if w in weights]
    conversion = {"int8": int8_mode()}  # how int8 entries' weights were converted ($LMSTACK_GEMV_INT8)
    if rank not in ("plain", "chained"):
        raise ValueError(f"tune_gemv: rank is 'plain' or 'chained', got {rank!r}")
    ranked = "chained" if rank == "chained" and pdl_capable(torch.empty(0, device=device)) else "plain"

    def launches(cfg: list[int], sets: list[tuple], t_ranked: float, glu: bool = False,
                 extra: dict[str, Any] | None = None) -> tuple[list[int], float, dict[str, float]]:
        """The best way to launch tile ``cfg``: a program per row block or PER_SM programs per SM, each plainly or
        (sm90+) chained by PDL; ([PDL, PER_SM], its us, every timing). ``t_ranked``: its time as ranked."""
        times = {f"{ranked} 0": t_ranked}
        for per_sm in TUNE_GEMV_PER_SM:
            for chained in (False, True) if pdl_capable(sets[0][0]) else (False,):
                if f"{'chained' if chained else 'plain'} {per_sm}" in times:
                    continue
                c = (*cfg, int(chained), per_sm)
                times[f"{'chained' if chained else 'plain'} {per_sm}"] = bench_rotated(
                    lambda x_, w_, s_=None, c=c, p=chained: gemv(x_, w_, s_, config=c, pdl=p, glu=glu,
                                                                 **(extra or {})), sets, device, replays=5) * 1e6
        how = min(times, key=times.get)
        mode, per_sm = how.split()
        return [int(mode == "chained"), int(per_sm)], times[how], {k: round(v, 2) for k, v in times.items()}

    for (name, N, K), int8 in itertools.product(shapes, kinds):
        x, w, args, nbytes, _ = one_row_case(N, K, int8, g, device, dtype)
        extra = decode_call(name, N, g, device, dtype)
        want = call_product(args, extra)
        sets = rotations(args, nbytes, device)
        skinny_cfg = skinny_plan(x, w)[:5]
        t_skinny = bench_rotated(lambda *xs, c=skinny_cfg, e=extra: skinny_mm(*xs, config=c, **e), sets, device,
                                 replays=5) * 1e6
        timings = _gemv_timings(gemv, args, sets, want, K, w.element_size(), device, glu=False, extra=extra,
                                chained=ranked == "chained")
        key = gemv_key(N, K, w.dtype)
        if not timings:
            raise SystemExit(f"error: no gemv candidate ran for {key} (see the skip lines above); nothing written")
        # the fastest tiles launched every way: a program per block or a persistent grid, plainly or chained by
        # programmatic dependent launch (each kernel loads its first weight block while the one before drains)
        ways = {tile: launches(json.loads(tile), sets, timings[tile], extra=extra)
                for tile in sorted(timings, key=timings.get)[:launch_top]}
        winner = min(ways, key=lambda tile: ways[tile][1])
        how, t_best, launch_times = ways[winner]
        skinny_pdl = {}
        if pdl_capable(x):  # the skinny twin chained (its L2 prefetch), for the record
            skinny_pdl["skinny_pdl_us"] = round(bench_rotated(
                lambda *xs, c=skinny_cfg, e=extra: skinny_mm(*xs, config=c, pdl=True, **e), sets, device,
                replays=5) * 1e6, 2)
        if t_best < t_skinny:  # [ROWS, BLOCK_K, num_warps, PDL, PER_SM]
            best[key] = json.loads(winner) + how
        detail[key] = {"us": round(t_best, 2), "GBps": round(nbytes / t_best / 1e3, 1), "tiles": json.loads(winner),
                       "launches": launch_times, "skinny": list(skinny_cfg), "skinny_us": round(t_skinny, 2),
                       "candidates": len(timings), "call": DECODE_CALLS.get(name, "plain"), **skinny_pdl,
                       **(conversion if int8 else {})}
        print(f"{key:18s} {name:8s} gemv best {json.loads(winner)} {launch_times} GB/s "
              f"{nbytes / t_best / 1e3:.0f}; skinny {list(skinny_cfg)} {t_skinny:6.1f} us ({len(timings)} candidates)"
              + (f" -> gemv {best[key]}" if key in best else ""), flush=True)
        if name == "gate_up":  # the SwiGLU in the epilogue: [gate | up] rows in pairs, F values out
            glu_timings = _gemv_timings(gemv, args, sets, swiglu(want[:, :N // 2], want[:, N // 2:]), K,
                                        w.element_size(), device, glu=True, extra=extra,
                                        chained=ranked == "chained")
            if glu_timings:
                ways = {tile: launches(json.loads(tile), sets, glu_timings[tile], glu=True, extra=extra)
                        for tile in sorted(glu_timings, key=glu_timings.get)[:launch_top]}
                glu_winner = min(ways, key=lambda tile: ways[tile][1])
                how, t_glu, glu_times = ways[glu_winner]
                best[f"{key} glu"] = json.loads(glu_winner) + how
                detail[f"{key} glu"] = {"us": round(t_glu, 2), "tiles": json.loads(glu_winner),
                                        "launches": glu_times, "candidates": len(glu_timings),
                                        **(conversion if int8 else {})}
                print(f"{key + ' glu':18s} {name:8s} gemv best {json.loads(glu_winner)} {glu_times} -> "
                      f"{best[key + ' glu']}", flush=True)
    table = {"_meta": {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "triton": __import__("triton").__version__,
                       "how": "bench_decode_kernels.py --tune-gemv: an entry where the best gemv tile beat the skinny "
                              "matmul's table tile in the same run, launched the fastest way (PDL 1: chained by "
                              "PDL; PER_SM: a persistent grid); '<shape> glu': the gate/up tile with the SwiGLU in "
                              "its epilogue; each shape called as a folded decode step calls it (detail's 'call'); "
                              "int8 weights converted as detail's 'int8' says ($LMSTACK_GEMV_INT8)",
                       "launch_top": launch_top, "rank": ranked, "detail": {card: detail}},
             card: best}
    write_json(path, table)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 8], help="activation rows of the matmuls")
    ap.add_argument("--out", default=None, help="write results as JSON here (atomically)")
    ap.add_argument("--tune-skinny", metavar="TABLE.json", default=None,
                    help="time the triton_skinny tile candidates at every shape and write this card's tile table")
    ap.add_argument("--tune-warps", default=",".join(map(str, TUNE_WARPS)),
                    help="--tune-skinny: num_warps candidates, comma-separated (default %(default)s)")
    ap.add_argument("--tune-stages", default=",".join(map(str, TUNE_STAGES)),
                    help="--tune-skinny: pipeline-stage candidates, comma-separated (default %(default)s)")
    ap.add_argument("--tune-matrices", default=None,
                    help="--tune-skinny: only these decode matrices, comma-separated, of "
                         + ", ".join(m[0] for m in MATRICES))
    ap.add_argument("--tune-weights", default="float,int8",
                    help="--tune-skinny: float (--dtype) and/or int8 weights, comma-separated (default %(default)s)")
    ap.add_argument("--tune-gemv", metavar="TABLE.json", default=None,
                    help="time the one-row gemv tile candidates against the skinny tiles and write this card's gemv "
                         "table (shapes from --tune-matrices, weights from --tune-weights)")
    ap.add_argument("--tune-rank", choices=["plain", "chained"], default="plain",
                    help="--tune-gemv: time every tile candidate launched plainly or chained by PDL (as a decode step "
                         "launches it) before the fastest are timed every way (default %(default)s)")
    ap.add_argument("--tune-launch-top", type=int, default=TUNE_GEMV_LAUNCH_TOP,
                    help="--tune-gemv: how many of the fastest tiles (timed a program per block, plainly) are then "
                         "timed launched every way, chained by PDL among them (default %(default)s)")
    a = ap.parse_args()
    check_device(a.device)
    tune_space = parse_tune_space(a.tune_warps, a.tune_stages, a.tune_matrices, a.tune_weights)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    if a.tune_skinny:
        if a.device != "cuda":
            raise SystemExit("error: --tune-skinny times the kernels of a GPU; run it with --device cuda on the card "
                             "the table is for")
        tune_skinny(a.tune_skinny, a.device, dtype, **tune_space)
        return
    if a.tune_gemv:
        if a.device != "cuda":
            raise SystemExit("error: --tune-gemv times the kernels of a GPU; run it with --device cuda on the card "
                             "the table is for")
        if a.tune_launch_top < 1:
            raise SystemExit(f"error: --tune-launch-top takes a count of at least 1, got {a.tune_launch_top}")
        tune_gemv(a.tune_gemv, a.device, dtype, matrices=tune_space["matrices"], weights=tune_space["weights"],
                  launch_top=a.tune_launch_top, rank=a.tune_rank)
        return
    reg = default_registry()
    bw = copy_bandwidth(a.device)
    print(f"copy bandwidth {bw / 1e9:,.0f} GB/s (read + write)")
    results = []
    seen_attention = False
    for rows in a.rows:
        for op, shape, args, nbytes in cases(rows, a.device, dtype):
            if op == "decode_attention":
                if seen_attention:
                    continue
                rows_label = "-"
            else:
                rows_label = rows
            want = reg.get(op, "reference").load()(*(t.float() if t.is_floating_point() else t for t in args)).float()
            sets = rotations(args, nbytes, a.device)
            for name in reg.names(op):  # every implementation, also those `auto` would not pick
                reason = reg.why_not(op, name, device=a.device, dtype=dtype, head_dim=DH, gqa=True)
                row = {"op": op, "shape": shape, "rows": rows_label, "impl": name}
                if reason is not None:
                    results.append({**row, "refused": reason})
                    continue
                fn = reg.get(op, name).load()
                err = (fn(*args).float() - want).abs().max().item()
                t = bench_rotated(fn, sets, a.device)
                row.update(us=t * 1e6, GBps=nbytes / t / 1e9, fraction_of_copy=nbytes / t / bw, max_abs_err=err)
                results.append(row)
                print(f"{op:16s} {shape:18s} rows {rows_label!s:3s} {name:14s} {t * 1e6:8.1f} us "
                      f"{nbytes / t / 1e9:8.0f} GB/s ({nbytes / t / bw:5.1%} of copy)  err {err:.1e}")
        seen_attention = True
    meta = {"date": datetime.date.today().isoformat(), "device": a.device, "dtype": a.dtype, "torch": torch.__version__,
            "card": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "copy_bandwidth_GBps": bw / 1e9}
    fractions = [r["fraction_of_copy"] for r in results if "fraction_of_copy" in r]
    print(f"median fraction of copy bandwidth over {len(fractions)} timings: {statistics.median(fractions):.1%}")
    if a.out:
        write_results(a.out, meta, results)


if __name__ == "__main__":
    main()
