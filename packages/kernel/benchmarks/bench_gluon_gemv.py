"""Timing only: the package's Gluon gemv (``kernel.triton.gemv_gluon``, ``$LMSTACK_GEMV_IMPL=gluon``) against the
shipped Triton gemv (``kernel.triton.gemv``) on the 1.1B decode shapes' int8 weights, at the card's table tile and
others, with x read from shared memory (staged once, ``$LMSTACK_GEMV_GLUON_X=smem``) or global memory.

Plain launches, in CUDA graphs with the weights rotated past L2 (``bench_decode_kernels.bench_rotated``), so this
times each gemv alone, not in decode's PDL chain (``python -m eval.bench decode`` with ``$LMSTACK_GEMV_IMPL`` does
that). Results: docs/benchmarks.md, decode runs BP, BR, BS and BV.

Two TMA prototypes that this script timed in session 18-19 (a program's whole (BLOCK_N, K) share copied into
shared memory by TMA, one box or a group of boxes a copy) were slower than the shipped gemv at every shape (runs BP
and BS) and were removed; the last commit with them is 38e9471.

    python packages/kernel/benchmarks/bench_gluon_gemv.py [--out gluon.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

SHAPES = {"qkv": (2560, 2048), "o": (2048, 2048), "gate_up": (11264, 2048), "down": (2048, 5632)}
# (ROWS, BLOCK_K, num_warps) beside the card's table tile: the int8 table's are (32, 512, 4 or 8) for gate/up
# and (4, 2048, 4 or 8) for the others
GLUON_TILES = [(32, 512, 4), (16, 512, 4), (8, 1024, 4), (4, 2048, 4), (4, 2048, 8), (8, 256, 2)]


def gluon_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, rows: int, block_k: int, warps: int,
               x_from: str = "smem"):
    """The package's gemv on its Gluon kernel (``$LMSTACK_GEMV_IMPL=gluon``), a plain launch, its K loop reading x
    from ``x_from`` (``$LMSTACK_GEMV_GLUON_X``)."""
    from kernel.triton import gemv as shipped
    from kernel.triton import gemv_gluon

    if not gemv_gluon.supports(x, w, shipped._i8_f16(w, rows * block_k // (32 * warps), x.dtype), False, block_k):
        raise ValueError(f"the Gluon gemv does not take tile {(rows, block_k, warps)} for {tuple(w.shape)}")
    with mock.patch.dict(os.environ, {shipped.IMPL_ENV: "gluon", gemv_gluon.X_ENV: x_from}):  # the caller's after
        return shipped.gemv(x, w, scale, config=(rows, block_k, warps))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the timings here as JSON")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode_kernels import bench_rotated

    from kernel.triton import gemv as shipped
    from kernel.triton._device import device_info
    from specs.io import atomic_write_text

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
        runs = [(f"gluon {'x'.join(map(str, c))}", gluon_gemv, c) for c in [cfg[:3]] * bool(cfg) + GLUON_TILES]
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
        atomic_write_text(args.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
