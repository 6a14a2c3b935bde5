"""The ``lora`` op (many adapters a batch, each row its own) per call, at the ~1.1B Llama shape's four projections
(fused q/k/v, o, fused gate/up, down), a decode step's N rows, S adapters of rank R on every row: the Triton
kernels at several (block, warps) against the dense form (two matmuls over every slot, the mask applied).

    python packages/kernel/benchmarks/bench_lora.py --out lora.json   # on a GPU

Each variant runs over 22 layers' own adapters and weights (from HBM, as in a decode step), captured in a CUDA graph
of ``--calls`` such passes and replayed; reports us a call (median of replays).
A benchmark, not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from kernel.reference import lora_dense
from kernel.triton import lora as tl_lora

LAYERS = 22
SHAPES = {"qkv": (2048, (0, 2048, 2304, 2560)), "o": (2048, (0, 2048)), "gate_up": (2048, (0, 5632, 11264)),
          "down": (5632, (0, 2048))}


def timed(fn, calls: int, replays: int = 20) -> float:
    """us a call of ``fn`` (which makes LAYERS calls of the op), in a CUDA graph of ``calls`` of them."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls / LAYERS)
    return statistics.median(times)


def bench_shape(n: int, d_in: int, bounds: tuple[int, ...], S: int, R: int, calls: int,
                variants: dict[str, dict]) -> dict[str, float]:
    dev, dt = "cuda", torch.bfloat16
    P, O = len(bounds) - 1, bounds[-1]
    x = torch.randn(n, d_in, device=dev, dtype=dt)
    y = torch.randn(n, O, device=dev, dtype=dt)
    # a decode step's 22 layers each with its own adapters (and base weight), so they come from HBM, not the L2
    A = [torch.randn(S * P * R, d_in, device=dev, dtype=dt) * 0.01 for _ in range(LAYERS)]
    Bs = [torch.randn(S * P * R, O, device=dev, dtype=dt) * 0.01 for _ in range(LAYERS)]
    W = [torch.randn(O, d_in, device=dev, dtype=dt) for _ in range(LAYERS)]
    a, b = A[0], Bs[0]
    rows = torch.arange(n, device=dev) % S
    scales = torch.ones(S, device=dev)
    mask = torch.rand(n, S * P * R, device=dev, dtype=dt)
    def each(fn):
        def run():
            for k in range(LAYERS):
                fn(k)
        return run

    row = {"base GEMM": timed(each(lambda k: F.linear(x, W[k])), calls),
           "dense (mask built)": timed(each(lambda k: lora_dense(y, x, A[k], Bs[k], rows, scales, bounds, dtype=dt)),
                                       calls),
           "dense (mask given)": timed(each(lambda k: y.addmm_(F.linear(x, A[k]) * mask, Bs[k])), calls)}
    for v, kw in variants.items():
        row[v] = timed(each(lambda k, kw=kw: tl_lora.lora(y, x, A[k], Bs[k], rows, scales, bounds, **kw)), calls)
    y0 = torch.randn(n, O, device=dev, dtype=dt)  # a fresh output (the timed calls grew y's values)
    want = lora_dense(y0.float(), x, a, b, rows, scales, bounds)
    got = tl_lora.lora(y0.clone(), x, a, b, rows, scales, bounds, kernel_rows=1 << 20)
    row["max_err"] = float((got.float() - want).abs().max())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16,64")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--out", default="")
    args = p.parse_args()
    variants = {f"triton k{k} w{w} r{r} o{o} w{w2}": {"shrink": (k, w, r), "expand": (o, w2), "kernel_rows": 1 << 20}
                for k, w, r in ((512, 4, 4), (1024, 4, 4), (1024, 4, 2), (2048, 4, 2), (2048, 8, 4), (1024, 8, 8))
                for o, w2 in ((128, 4), (64, 2))}
    results = {"card": torch.cuda.get_device_name(), "slots": args.slots, "rank": args.rank, "us": {}}
    for n in map(int, args.rows.split(",")):
        for name, (d_in, bounds) in SHAPES.items():
            row = bench_shape(n, d_in, bounds, args.slots, args.rank, args.calls, variants)
            results["us"][f"{name} N={n}"] = row
            best = min((k for k in row if k.startswith("triton")), key=row.get)
            print(f"{name:8s} N={n:3d} base {row['base GEMM']:6.2f} dense {row['dense (mask built)']:6.2f} "
                  f"premask {row['dense (mask given)']:6.2f} best {best} {row[best]:6.2f} err {row['max_err']:.1e}",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
