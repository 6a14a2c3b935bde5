"""How long a GPU takes to read N MB when N is a decode matmul's size: the floor under every small decode kernel.

A 1.1B decode step's q/k/v and o matmuls read ~10 MB each and take ~6 us on an H200 whatever the kernel (per-op,
inside one persistent kernel, cp.async or TMA: docs/benchmarks.md), which is 1.6 TB/s against the 4.1 TB/s a 1 GB
copy reaches. This asks the memory system alone, with nothing to compute:

- ``copy``: torch's device-to-device copy of N MB (N read, N written);
- ``read``: a Triton kernel that only reads N MB (each program sums a contiguous slice with UNROLL independent
  16-byte loads in flight per thread, PER_SM programs per SM);
- ``read-pdl`` (sm90+): the same launched with programmatic dependent launch, each kernel letting the next start
  at once and never waiting for it (the reads are independent): how much of the floor overlapping successive
  kernels could hide.

Every size is timed as 8-256 calls on distinct buffers (ROTATE_MB in all at least: past the L2 cache) captured in
one CUDA graph; ``a + bytes / bandwidth`` is fitted over the sizes by least squares, ``a`` being the fixed cost of
one call.
``python packages/kernel/benchmarks/bench_hbm_floor.py [--out F.json]``. Off CUDA (the CPU tests) the read kernel
runs under Triton's interpreter and only its sums are checked.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
import triton.language as tl
from bench_decode_kernels import bench_rotated  # beside this script: every call in one CUDA graph

from specs.io import atomic_write_text

SIZES_MB = (1, 2, 4, 8, 10, 16, 23, 32, 46, 64, 128)
ROTATE_MB = 256  # bytes read per graph replay at least: several times the L2 cache (50-60 MB on an H100/H200)
BLOCK = 1024  # elements per load of a program (8 per thread at four warps: one 16-byte load of bf16 each)
UNROLL = 8
PER_SM = 4


@triton.jit
def _read(x_ptr, out_ptr, n, chunk, BLOCK: tl.constexpr, UNROLL: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    if PDL:  # the next kernel may start now: it reads other buffers and never waits for this one
        tl.extra.cuda.gdc_launch_dependents()
    lo = pid.to(tl.int64) * chunk
    hi = tl.minimum(lo + chunk, n)
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(lo, hi, BLOCK * UNROLL):
        for u in tl.static_range(UNROLL):  # independent loads, all in flight before their sums
            offs = start + u * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offs, mask=offs < hi, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


def read(x: torch.Tensor, out: torch.Tensor, programs: int, pdl: bool = False) -> torch.Tensor:
    """Per-program sums of x (1-D) into out (programs,) fp32, each program a contiguous slice."""
    n = x.numel()
    chunk = triton.cdiv(triton.cdiv(n, programs), BLOCK * UNROLL) * BLOCK * UNROLL
    _read[(programs,)](x, out, n, chunk, BLOCK=BLOCK, UNROLL=UNROLL, PDL=pdl, num_warps=4,
                       **({"launch_pdl": True} if pdl else {}))
    return out


def fit(sizes_bytes: list[float], seconds: list[float]) -> tuple[float, float]:
    """Least-squares ``t = a + bytes / bw``: (a seconds, bw bytes/s)."""
    n = len(sizes_bytes)
    mx, my = sum(sizes_bytes) / n, sum(seconds) / n
    sxx = sum((x - mx) ** 2 for x in sizes_bytes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes_bytes, seconds)) / sxx
    return my - slope * mx, 1.0 / slope


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--sizes-mb", default=",".join(map(str, SIZES_MB)))
    args = ap.parse_args(argv)
    try:
        sizes = [float(s) for s in args.sizes_mb.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        sys.exit(f"error: --sizes-mb expects two or more positive sizes in MB, comma-separated, got {args.sizes_mb!r}")
    if not torch.cuda.is_available():
        sys.exit("bench_hbm_floor times a GPU's memory; it needs CUDA")
    props = torch.cuda.get_device_properties(0)
    programs = PER_SM * props.multi_processor_count
    pdl = torch.cuda.get_device_capability(0) >= (9, 0)
    report: dict = {"card": props.name, "programs": programs, "sizes_mb": sizes, "variants": {}}
    variants = {"copy": None, "read": False, **({"read-pdl": True} if pdl else {})}
    for name, flag in variants.items():
        rows = []
        for mb in sizes:
            n = int(mb * 2 ** 20) // 2
            calls = min(256, max(8, -(-ROTATE_MB // int(max(mb, 1)))))
            bufs = [torch.randn(n, device="cuda").to(torch.bfloat16) for _ in range(calls)]
            if name == "copy":
                dsts = [torch.empty_like(b) for b in bufs]
                t = bench_rotated(lambda s, d: d.copy_(s), list(zip(bufs, dsts)), "cuda")
                moved = 2 * n * 2
            else:
                outs = [torch.empty(programs, device="cuda") for _ in bufs]
                got = read(bufs[0], outs[0], programs).sum().item()
                want = bufs[0].float().sum().item()
                if abs(got - want) > 1e-3 * max(1.0, abs(want)) + 1.0:
                    raise AssertionError(f"read kernel sums {got} for {want}")
                t = bench_rotated(lambda x, o, flag=flag: read(x, o, programs, flag), list(zip(bufs, outs)), "cuda")
                moved = n * 2
            rows.append({"mb": mb, "us": t * 1e6, "TBps": moved / t / 1e12})
            del bufs
            torch.cuda.empty_cache()
        a, bw = fit([r["mb"] * 2 ** 20 * (2 if name == "copy" else 1) for r in rows], [r["us"] / 1e6 for r in rows])
        report["variants"][name] = {"rows": rows, "fixed_us": a * 1e6, "fit_TBps": bw / 1e12}
        print(name, f"fixed {a * 1e6:.2f} us, {bw / 1e12:.2f} TB/s;",
              " ".join(f"{r['mb']:g}MB:{r['us']:.1f}us" for r in rows), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
