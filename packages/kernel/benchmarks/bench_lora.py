"""The ``lora`` op (many adapters a batch, each row its own) per call, at the ~1.1B Llama shape's four projections
(fused q/k/v, o, fused gate/up, down), a decode step's N rows, S adapters of rank R on every row: the Triton
kernels at several (block, warps) against the dense form (two matmuls over every slot, the mask applied).

    python packages/kernel/benchmarks/bench_lora.py --out lora.json   # on a GPU

Each variant runs over 22 layers' own adapters and weights (from HBM, as in a decode step), every call captured in
one CUDA graph and replayed (``bench_decode_kernels.bench_rotated``); reports us a call (median of replays).
A benchmark, not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_decode_kernels import bench_rotated  # beside this script
from bench_kernels import checked_gpu, write_json

from kernel.lora import lora_dense
from kernel.triton import lora as tl_lora

LAYERS = 22
SHAPES = {"qkv": (2048, (0, 2048, 2304, 2560)), "o": (2048, (0, 2048)), "gate_up": (2048, (0, 5632, 11264)),
          "down": (5632, (0, 2048))}


def bench_shape(n: int, d_in: int, bounds: tuple[int, ...], S: int, R: int,
                variants: dict[str, dict]) -> dict[str, float]:
    dev, dt = "cuda", torch.bfloat16
    P, O = len(bounds) - 1, bounds[-1]
    x = torch.randn(n, d_in, device=dev, dtype=dt)
    y = torch.randn(n, O, device=dev, dtype=dt)
    # a decode step's 22 layers each with its own adapters (and base weight), so they come from HBM, not the L2
    A = [torch.randn(S * P * R, d_in, device=dev, dtype=dt) * 0.01 for _ in range(LAYERS)]
    part_of_row = (torch.arange(S * P * R, device=dev) // R) % P  # B's rows hold their part's columns only
    part_of_col = torch.bucketize(torch.arange(O, device=dev), torch.tensor(bounds[1:], device=dev), right=True)
    keep = (part_of_row[:, None] == part_of_col[None, :]).to(dt)
    Bs = [torch.randn(S * P * R, O, device=dev, dtype=dt) * 0.01 * keep for _ in range(LAYERS)]
    W = [torch.randn(O, d_in, device=dev, dtype=dt) for _ in range(LAYERS)]
    a, b = A[0], Bs[0]
    rows = torch.arange(n, device=dev) % S
    scales = torch.ones(S, device=dev)
    mask = torch.rand(n, S * P * R, device=dev, dtype=dt)
    layers = [(A[k], Bs[k]) for k in range(LAYERS)]

    def us(fn, sets=layers):
        return bench_rotated(fn, sets, "cuda") * 1e6

    row = {"base GEMM": us(lambda w: F.linear(x, w), [(w,) for w in W]),
           "dense (mask built)": us(lambda a, b: lora_dense(y, x, a, b, rows, scales, bounds, dtype=dt)),
           "dense (mask given)": us(lambda a, b: y.addmm_(F.linear(x, a) * mask, b))}
    for v, kw in variants.items():
        row[v] = us(lambda a, b, kw=kw: tl_lora.lora(y, x, a, b, rows, scales, bounds, **kw))
    y0 = torch.randn(n, O, device=dev, dtype=dt)  # a fresh output (the timed calls grew y's values)
    want = lora_dense(y0.float(), x, a, b, rows, scales, bounds)
    got = tl_lora.lora(y0.clone(), x, a, b, rows, scales, bounds, kernel_rows=1 << 20)
    row["max_err"] = float((got.float() - want).abs().max())
    return row


def check(device: str) -> float:
    """The kernels against the dense form on a small q/k/v-like shape (3 parts, rank 12, some rows without an
    adapter): the largest error over the largest output."""
    g = torch.Generator().manual_seed(0)
    S, R, bounds, d_in, n = 3, 12, (0, 64, 80, 96), 72, 7
    W = S * 3 * R
    a, b = (torch.randn(W, d_in, generator=g) * 0.3).to(device), torch.zeros(W, bounds[-1])
    for w in range(W):  # B's rows only in their part's columns
        p = (w // R) % 3
        b[w, bounds[p]:bounds[p + 1]] = torch.randn(bounds[p + 1] - bounds[p], generator=g) * 0.3
    b = b.to(device)
    x, y = torch.randn(n, d_in, generator=g).to(device), torch.randn(n, bounds[-1], generator=g).to(device)
    rows, scales = torch.tensor([0, 3, 1, 2, 3, 0, 1], device=device), torch.tensor([0.5, 1.0, 2.0], device=device)
    want = lora_dense(y.clone(), x, a, b, rows, scales, bounds)
    got = tl_lora.lora(y.clone(), x, a, b, rows, scales, bounds, kernel_rows=1 << 20)
    return float((got - want).abs().max() / want.abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16,64")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--out", default="")
    p.add_argument("--check", action="store_true", help="only check the kernels' values (a CPU runs them under "
                   "TRITON_INTERPRET=1)")
    args = p.parse_args()
    err = checked_gpu("bench_lora", check, "the kernels against the dense form, a small shape", args.check)
    if err is None:
        return
    variants = {f"triton k{k} w{w} r{r} o{o} w{w2}": {"shrink": (k, w, r), "expand": (o, w2), "kernel_rows": 1 << 20}
                for k, w, r in ((512, 4, 4), (1024, 4, 4), (1024, 4, 2), (2048, 4, 2), (2048, 8, 4), (1024, 8, 8))
                for o, w2 in ((128, 4), (64, 2))}
    results = {"card": torch.cuda.get_device_name(), "slots": args.slots, "rank": args.rank, "check_error": err,
               "us": {}}
    for n in map(int, args.rows.split(",")):
        for name, (d_in, bounds) in SHAPES.items():
            row = bench_shape(n, d_in, bounds, args.slots, args.rank, variants)
            results["us"][f"{name} N={n}"] = row
            best = min((k for k in row if k.startswith("triton")), key=row.get)
            print(f"{name:8s} N={n:3d} base {row['base GEMM']:6.2f} dense {row['dense (mask built)']:6.2f} "
                  f"premask {row['dense (mask given)']:6.2f} best {best} {row[best]:6.2f} err {row['max_err']:.1e}",
                  flush=True)
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
