"""Decode-shaped inference kernels against the memory roofline: the bandwidth each implementation sustains.

    python packages/kernel/benchmarks/bench_decode_kernels.py --out decode_kernels.json          # on a GPU
    python packages/kernel/benchmarks/bench_decode_kernels.py --device cpu --rows 1              # references only

A decode step is bound by bytes: every weight matrix is read once per step and every cached key/value row once per
layer. For each op (``linear``, ``int8_linear``, ``decode_attention``) at the ~1.1B Llama decode shapes (the
layer's fused q/k/v, o, fused gate/up and down projections and the LM head; attention over 384 and 2048 cached
slots), every implementation the registry can serve here is timed with ``triton.testing.do_bench`` (CUDA events,
the L2 cache flushed before every call, so weights come from HBM) and reported as GB/s of bytes it must read,
beside the device-to-device copy bandwidth measured in the same run (bytes read + written). Max abs error against
the fp32 reference is printed with each. A benchmark, not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics

import torch
from bench_kernels import check_device, write_results  # beside this script

from kernel import default_registry

# (name, N, K) of the ~1.1B Llama decode step: hidden 2048, 32 heads / 4 KV heads of 64, FFN 5632, vocab 32000
MATRICES = [("qkv", 2560, 2048), ("o", 2048, 2048), ("gate_up", 11264, 2048), ("down", 2048, 5632),
            ("lm_head", 32000, 2048)]
ATTENTION = [(1, 384), (1, 2048), (32, 384), (32, 2048)]  # (rows, cached slots)
H, KVH, DH = 32, 4, 64


def bench(fn, device: str) -> float:
    """Median seconds of ``fn()``."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    from torch.utils import benchmark

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 8], help="activation rows of the matmuls")
    ap.add_argument("--out", default=None, help="write results as JSON here (atomically)")
    a = ap.parse_args()
    check_device(a.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
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
            for name in reg.names(op):
                reason = reg.why_not(op, name, device=a.device, dtype=dtype, head_dim=DH, gqa=True)
                row = {"op": op, "shape": shape, "rows": rows_label, "impl": name}
                if reason is not None:
                    results.append({**row, "refused": reason})
                    continue
                fn = reg.get(op, name).load()
                err = (fn(*args).float() - want).abs().max().item()
                t = bench(lambda fn=fn, args=args: fn(*args), a.device)
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
