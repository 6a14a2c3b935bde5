"""Prototypes, timing only: int8 one-row gemvs in Gluon (Triton's layout-explicit language, sm90) against the
shipped Triton gemv (``kernel.triton.gemv``) on the 1.1B decode shapes.

Why (docs/benchmarks.md, session 18): the shipped int8 gemvs expose ~2.7 TB/s in decode against bf16's ~3.6, and
Nsight Compute finds them waiting on latency at 14% occupancy, while dropping one conversion instruction in seven
gained only 1.3% (run BO). Two things the Triton kernel cannot change are tried here:

- ``tma``/``tma3``: a program's whole (BLOCK_N, K) share is in flight from its first instructions, by TMA copies
  into shared memory (one mbarrier a group of boxes), so registers no longer bound the bytes in flight; the warps
  convert and multiply groups of (BLOCK_N, 128) boxes as they land, K split across warps. ``tma`` copies one box a
  copy, ``tma3`` a group at once (the weight seen as (N, K / 128, 128)).
- ``gluon``: the package's own Gluon gemv (``kernel.triton.gemv_gluon``, ``$LMSTACK_GEMV_IMPL=gluon``): the shipped
  kernel's design (a weight block a K step, in registers) with x loaded straight into the weight block's column
  slice. The Triton kernel's sm90 code moves x through shared memory every K step, with four CTA barriers
  (stmatrix, bar.sync, ld.shared); this one has none in its K loop. Timed with the card's table tiles and others.

Products as the shipped kernel's f16 path (x scaled by 2^-7, int8 to fp16 exactly by the same inline PTX), so the
values match it within fp16 rounding. ``tma``/``tma3`` have no PDL, folded norm, bias, residual or SwiGLU yet;
this times whether they are worth building those for. Plain launches of all, in CUDA graphs with the weights rotated
past L2 (``bench_decode_kernels.bench_rotated``).

First run (run BP, an H200, ``tma`` alone): correct, and slower than the shipped gemv at every shape (gate/up 11.2
us against 9.3, down 10.1 against 6.6): Gluon puts a CTA barrier between consecutive TMA copies, so a program's
16-44 box copies go out one barrier apart. ``tma3`` and ``gluon`` are not yet timed.

    python packages/kernel/benchmarks/bench_gluon_gemv.py [--out gluon.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from kernel.triton.gemv import F16_X_SCALE as X_SCALE  # x's scale before its fp16 products
from kernel.triton.gemv_gluon import _i8_to_f16

BOX_K = 128  # int8 columns a TMA box: 128 bytes, the widest 128-byte swizzle takes


@gluon.jit
def _tma_gemv_i8(w_desc, x_ptr, scale_ptr, out_ptr, NUM_K: gl.constexpr, NUM_KP: gl.constexpr, NUM_GP: gl.constexpr,
                 WK: gl.constexpr, WN: gl.constexpr):
    """out[n] = scale[n] * sum_k w[n, k] x[k] for this program's BLOCK_N rows: NUM_K boxes of (BLOCK_N, BOX_K),
    WK warps along the boxes (a group of WK boxes a step), WN along the rows."""
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    BK: gl.constexpr = w_desc.block_type.shape[1]
    row0 = gl.program_id(0) * BLOCK_N
    NUM_G: gl.constexpr = NUM_K // WK
    bufs = gl.allocate_shared_memory(gl.int8, [NUM_KP, BLOCK_N, BK], w_desc.layout)  # NUM_KP: NUM_K to a power of 2
    # the same bytes as a rank-3 layout (boxes stacked along a leading dimension), for loads of several boxes at once
    ring: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_desc.layout.swizzle_byte_width, element_bitwidth=8,
                                              rank=3)
    boxes = bufs._reinterpret(gl.int8, [NUM_KP, BLOCK_N, BK], ring)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_GP, 1], mbarrier.MBarrierLayout())  # one a group of WK boxes
    for g in gl.static_range(NUM_G):
        mbarrier.init(bars.index(g), count=1)
    for g in gl.static_range(NUM_G):  # every box of this program's share in flight at once
        mbarrier.expect(bars.index(g), WK * w_desc.block_type.nbytes)
        for j in gl.static_range(WK):
            tma.async_copy_global_to_shared(w_desc, [row0, (g * WK + j) * BK], bars.index(g), bufs.index(g * WK + j))
    # (group box, row, column): 16 int8 a thread, 8 threads a 128-byte box row, 4 rows a warp
    l3: gl.constexpr = gl.BlockedLayout([1, 1, 16], [1, 4, 8], [WK, WN, 1], [2, 1, 0])
    lx: gl.constexpr = gl.SliceLayout(1, l3)
    gi = gl.arange(0, WK, layout=gl.SliceLayout(1, lx))
    kk = gl.arange(0, BK, layout=gl.SliceLayout(0, lx))
    acc = gl.zeros([WK, BLOCK_N, BK], gl.float16, l3)
    for g in gl.static_range(NUM_K // WK):
        x = gl.load(x_ptr + (g * WK + gi)[:, None] * BK + kk[None, :]).to(gl.float32)
        xh = (x * X_SCALE).to(gl.float16)
        mbarrier.wait(bars.index(g), 0)
        w = boxes.slice(g * WK, WK).load(l3)
        acc += _i8_to_f16(w) * gl.expand_dims(xh, 1)
    for g in gl.static_range(NUM_G):
        mbarrier.invalidate(bars.index(g))
    y = gl.sum(gl.sum(acc.to(gl.float32), axis=2), axis=0) * (1.0 / X_SCALE)
    n = row0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(2, l3)))
    y = y * gl.load(scale_ptr + n)
    gl.store(out_ptr + n, y.to(gl.bfloat16))


@gluon.jit
def _tma3_gemv_i8(w_desc, x_ptr, scale_ptr, out_ptr, NUM_G: gl.constexpr, NUM_GP: gl.constexpr, WN: gl.constexpr):
    """As :func:`_tma_gemv_i8`, the weight seen as (N, K / 128, 128): one TMA copy a group, a (BLOCK_N, WK, 128)
    box, so a program issues NUM_G copies instead of NUM_G * WK (Gluon orders each copy after the one before with a
    CTA barrier)."""
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    WK: gl.constexpr = w_desc.block_type.shape[1]
    BK: gl.constexpr = w_desc.block_type.shape[2]
    row0 = gl.program_id(0) * BLOCK_N
    bufs = gl.allocate_shared_memory(gl.int8, [NUM_GP, BLOCK_N, WK, BK], w_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_GP, 1], mbarrier.MBarrierLayout())
    for g in gl.static_range(NUM_G):
        mbarrier.init(bars.index(g), count=1)
    for g in gl.static_range(NUM_G):
        mbarrier.expect(bars.index(g), w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w_desc, [row0, g * WK, 0], bars.index(g), bufs.index(g))
    # (row, group box, column): warps WN along the rows, WK along the boxes
    l3: gl.constexpr = gl.BlockedLayout([1, 1, 16], [4, 1, 8], [WN, WK, 1], [2, 1, 0])
    lx: gl.constexpr = gl.SliceLayout(0, l3)
    gi = gl.arange(0, WK, layout=gl.SliceLayout(1, lx))
    kk = gl.arange(0, BK, layout=gl.SliceLayout(0, lx))
    acc = gl.zeros([BLOCK_N, WK, BK], gl.float16, l3)
    for g in gl.static_range(NUM_G):
        x = gl.load(x_ptr + (g * WK + gi)[:, None] * BK + kk[None, :]).to(gl.float32)
        xh = (x * X_SCALE).to(gl.float16)
        mbarrier.wait(bars.index(g), 0)
        w = bufs.index(g).load(l3)
        acc += _i8_to_f16(w) * gl.expand_dims(xh, 0)
    for g in gl.static_range(NUM_G):
        mbarrier.invalidate(bars.index(g))
    y = gl.sum(gl.sum(acc.to(gl.float32), axis=2), axis=1) * (1.0 / X_SCALE)
    n = row0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, gl.SliceLayout(2, l3)))
    y = y * gl.load(scale_ptr + n)
    gl.store(out_ptr + n, y.to(gl.bfloat16))


def tma_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, block_n: int, wk: int, wn: int,
             grouped: bool = False) -> torch.Tensor:
    """x (1, K) bf16 @ w (N, K) int8 .T * scale (N,) fp32 -> (1, N) bf16 by :func:`_tma_gemv_i8` (one TMA copy a
    (block_n, 128) box) or, ``grouped``, :func:`_tma3_gemv_i8` (one a group of ``wk`` boxes); N a multiple of
    block_n, K of 128 * wk, block_n of 4 * wn."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    N, K = w.shape
    if N % block_n or K % (BOX_K * wk) or block_n % (4 * wn):
        raise ValueError(f"tma_gemv: N {N} must divide by block_n {block_n}, K {K} by {BOX_K * wk}, "
                         f"block_n by {4 * wn}")
    out = torch.empty(1, N, dtype=torch.bfloat16, device=x.device)
    groups = K // (BOX_K * wk)
    if grouped:
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=3)
        desc = TensorDescriptor.from_tensor(w.view(N, K // BOX_K, BOX_K), [block_n, wk, BOX_K], layout)
        _tma3_gemv_i8[(N // block_n,)](desc, x, scale, out, NUM_G=groups, NUM_GP=triton.next_power_of_2(groups),
                                       WN=wn, num_warps=wk * wn)
    else:
        desc = TensorDescriptor.from_tensor(w, [block_n, BOX_K], gl.NVMMASharedLayout.get_default_for([block_n, BOX_K],
                                                                                                     gl.int8))
        _tma_gemv_i8[(N // block_n,)](desc, x, scale, out, NUM_K=K // BOX_K, NUM_KP=triton.next_power_of_2(K // BOX_K),
                                      NUM_GP=triton.next_power_of_2(groups), WK=wk, WN=wn, num_warps=wk * wn)
    return out


def tma3_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, block_n: int, wk: int, wn: int) -> torch.Tensor:
    return tma_gemv(x, w, scale, block_n, wk, wn, grouped=True)


SHAPES = {"qkv": (2560, 2048), "o": (2048, 2048), "gate_up": (11264, 2048), "down": (2048, 5632)}
CONFIGS = [(8, 4, 1), (16, 4, 1), (16, 4, 2), (32, 4, 2), (8, 2, 2), (16, 8, 1), (32, 8, 1)]
# gluon: (ROWS, BLOCK_K, num_warps) beside the card's table tile: the int8 table's are (32, 512, 4 or 8) for gate/up
# and (4, 2048, 4 or 8) for the others
GLUON_TILES = [(32, 512, 4), (16, 512, 4), (8, 1024, 4), (4, 2048, 4), (4, 2048, 8), (8, 256, 2)]


def gluon_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, rows: int, block_k: int, warps: int,
               x_from: str = "smem"):
    """The package's gemv on its Gluon kernel (``$LMSTACK_GEMV_IMPL=gluon``), a plain launch, its K loop reading x
    from ``x_from`` (``$LMSTACK_GEMV_GLUON_X``)."""
    import os

    from kernel.triton import gemv as shipped
    from kernel.triton import gemv_gluon

    if not gemv_gluon.supports(x, w, shipped._i8_f16(w, rows * block_k // (32 * warps), x.dtype), False):
        raise ValueError(f"the Gluon gemv does not take tile {(rows, block_k, warps)} for {tuple(w.shape)}")
    settings = {shipped.IMPL_ENV: "gluon", gemv_gluon.X_ENV: x_from}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        return shipped.gemv(x, w, scale, config=(rows, block_k, warps))
    finally:  # the caller's settings back
        for k, v in before.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the timings here as JSON")
    ap.add_argument("--tma", action="store_true", help="time the one-box-a-copy TMA prototype too (run BP: slower "
                    "than the shipped gemv at every shape)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode_kernels import bench_rotated

    from kernel.triton import gemv as shipped
    from kernel.triton._device import device_info

    card = torch.cuda.get_device_name()
    g = torch.Generator(device="cuda").manual_seed(0)
    results: dict = {"card": card, "shapes": {}}
    for name, (N, K) in SHAPES.items():
        sets = []
        for _ in range(8):  # 8 weight copies, rotated: past the 60 MB L2 for every shape here
            w = torch.randint(-127, 128, (N, K), dtype=torch.int8, device="cuda", generator=g)
            sets.append((torch.randn(1, K, device="cuda", generator=g).bfloat16(), w,
                         torch.rand(N, device="cuda", generator=g) / 64 + 1 / 128))
        x, w, s = sets[0]
        want = ((x.float() @ w.float().t()) * s).float()
        cfg = shipped.choose_tiles(N, K, torch.int8, device_info(x)[1])
        row: dict = {}
        if cfg:
            got = shipped.gemv(x, w, s, config=cfg).float()
            row["shipped"] = {"tiles": list(cfg), "max_err": (got - want).abs().max().item(),
                              "us": bench_rotated(lambda x_, w_, s_, c=cfg: shipped.gemv(x_, w_, s_, config=c), sets,
                                                  "cuda", replays=10) * 1e6}
        runs = [(f"{kind} {'x'.join(map(str, c))}", fn, c) for (kind, fn), c in
                itertools.product([("tma3", tma3_gemv)] + [("tma", tma_gemv)] * args.tma, CONFIGS)]
        runs += [(f"gluon {'x'.join(map(str, c))}", gluon_gemv, c) for c in [cfg[:3]] * bool(cfg) + GLUON_TILES]
        runs += [(f"gluon-global {'x'.join(map(str, cfg[:3]))}", gluon_gemv, (*cfg[:3], "global"))] * bool(cfg)
        for key, fn, c in runs:
            try:
                got = fn(x, w, s, *c).float()
                err = (got - want).abs().max().item()
                us = bench_rotated(lambda x_, w_, s_, f=fn, c=c: f(x_, w_, s_, *c), sets, "cuda", replays=10) * 1e6
                row[key] = {"max_err": err, "us": us}
            except Exception as e:  # a config that does not fit or compile is reported, not fatal
                row[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        scale = want.abs().max().item()
        for v in row.values():
            if "us" in v:
                v["GBps"] = N * K / v["us"] / 1e3
                v["rel_err"] = v["max_err"] / scale
        results["shapes"][name] = row
        best = min((v["us"], k) for k, v in row.items() if "us" in v)
        print(f"{name} {N}x{K}: " + ", ".join(f"{k} {v['us']:.2f} us (err {v['rel_err']:.1e})" if "us" in v
                                            else f"{k} {v['error'][:60]}" for k, v in row.items())
              + f" | best {best[1]} {best[0]:.2f} us", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
