"""Time every implementation of every kernel op that can serve the request on this device, beside the reference.

    python packages/kernel/benchmarks/bench_kernels.py --device cuda --dtype bf16 --out kernels.json
    python packages/kernel/benchmarks/bench_kernels.py --device cpu --dtype fp32 --size small

For each op and implementation: median forward and forward+backward time (torch.utils.benchmark), peak CUDA
memory of forward+backward, and the max abs error of the forward against the reference run in fp32 on the same
inputs. Implementations that refuse the request are listed with their ``why_not`` reason. A benchmark, not a test.
The linear cross-entropies compute their gradients inside the forward (that is how they avoid keeping logits), so
their "fwd" time includes the gradient work whenever inputs require grad, as they do here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections.abc import Callable

import torch
from torch.utils import benchmark

from kernel import default_registry
from specs.io import atomic_write_text
from tensor.rope import rope_cos_sin, rope_inv_freq

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (B, T, H, KVH, Dh, D, F, V): "large" is a Llama-1B-like layer at 2k context, "small" fits a laptop CPU.
SIZES = {"large": (4, 2048, 32, 4, 64, 2048, 5632, 32000), "small": (2, 256, 8, 2, 64, 512, 1376, 8000)}


def make_cases(size: str, device: str, dtype: torch.dtype):
    B, T, H, KVH, Dh, D, F, V = SIZES[size]
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    cos, sin = rope_cos_sin(torch.arange(T)[None].to(device), rope_inv_freq(Dh, 10000.0), dtype)
    labels = torch.randint(0, V, (B * T,), generator=g).to(device)
    return {
        "attention": (dict(head_dim=Dh, causal=True, gqa=True),
                      lambda: (r(B, H, T, Dh), r(B, KVH, T, Dh), r(B, KVH, T, Dh)), dict(causal=True)),
        "rmsnorm": ({}, lambda: (r(B * T, D), 1 + r(D, scale=0.1)), {"eps": 1e-5}),
        "rope": (dict(head_dim=Dh), lambda: (r(B, H, T, Dh),), dict(cos_BTDh=cos, sin_BTDh=sin)),
        "swiglu": ({}, lambda: (r(B * T, F), r(B * T, F)), {}),
        "gelu_mlp": ({}, lambda: (r(B * T, D), r(F, D, scale=D ** -0.5), r(F, scale=0.1), r(D, F, scale=F ** -0.5),
                                  r(D, scale=0.1)), {}),
        "cross_entropy": ({}, lambda: (r(B * T, V),), dict(labels_N=labels)),
        "linear_cross_entropy": ({}, lambda: (r(B * T, D), r(V, D, scale=0.02)), dict(labels_N=labels)),
    }


def call(op: str, fn: Callable, args: tuple, kw: dict):
    if op == "rmsnorm":
        return fn(args[0], args[1], kw["eps"])
    if op == "rope":
        return fn(args[0], kw["cos_BTDh"], kw["sin_BTDh"])
    if op in ("cross_entropy", "linear_cross_entropy"):
        return fn(*args, kw["labels_N"])
    return fn(*args, **kw)


def time_it(stmt: Callable[[], object], min_run_time: float) -> float:
    return benchmark.Timer(stmt="stmt()", globals={"stmt": stmt}).blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--size", choices=sorted(SIZES), default="large")
    ap.add_argument("--ops", nargs="*", default=None, help="subset of ops (default: all)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    a = ap.parse_args()
    check_device(a.device)
    dtype, reg = DTYPES[a.dtype], default_registry()
    results = []
    for op, (req, make, kw) in make_cases(a.size, a.device, dtype).items():
        if a.ops and op not in a.ops:
            continue
        base = make()
        ref_out = call(op, reg.get(op, "reference").load(), tuple(t.float() for t in base),
                       {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                        for k, v in kw.items()}).float()
        for name in reg.names(op):
            reason = reg.why_not(op, name, device=a.device, dtype=dtype, backward=True, **req)
            row = {"op": op, "impl": name}
            if reason is not None:
                results.append({**row, "refused": reason})
                print(f"{op:22s} {name:10s} refused: {reason}")
                continue
            fn = reg.get(op, name).load()
            args = tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in base)
            err = (call(op, fn, args, kw).float() - ref_out).abs().max().item()
            fwd = time_it(lambda op=op, fn=fn, args=args, kw=kw: call(op, fn, args, kw), a.min_run_time)

            def step(op=op, fn=fn, args=args, kw=kw):
                out = call(op, fn, args, kw)
                out.backward(torch.ones_like(out))

            if a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step()
            peak = torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None
            fwd_bwd = time_it(step, a.min_run_time)
            results.append({**row, "fwd_ms": fwd * 1e3, "fwd_bwd_ms": fwd_bwd * 1e3, "peak_mib": peak,
                            "max_abs_err_vs_fp32_ref": err})
            print(f"{op:22s} {name:10s} fwd {fwd * 1e3:9.3f} ms  fwd+bwd {fwd_bwd * 1e3:9.3f} ms  "
                  f"err {err:.2e}" + (f"  peak {peak:.0f} MiB" if peak is not None else ""))
    meta = {"date": datetime.date.today().isoformat(), "device": a.device, "dtype": a.dtype, "size": a.size,
            "shapes(B,T,H,KVH,Dh,D,F,V)": SIZES[a.size], "torch": torch.__version__, "host": platform.node(),
            "card": torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or "cpu"}
    if a.out:
        write_results(a.out, meta, results)


def write_json(path: str, doc: object) -> None:
    """``doc`` as JSON, atomically (``specs.io.atomic_write_text``: a temporary file beside it, then a rename)."""
    atomic_write_text(path, json.dumps(doc, indent=2))


def checked_gpu(script: str, check, what: str, only_check: bool) -> float | None:
    """A prototype benchmark's start: ``check(device)`` (its values on a small shape, under Triton's interpreter off a
    GPU) printed as ``what``; the error it returns, or None where the run is to do no more (``only_check``). Asked to
    time without a CUDA GPU, stops with a message naming ``script``, having written nothing."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    err = check(device)
    print(f"{what}: max error {err:.2e} of the largest output")
    if only_check:
        return None
    if device != "cuda":
        raise SystemExit(f"{script}: timing needs a CUDA GPU and there is none here; the values were checked above "
                         f"(--check does only that), and nothing was written")
    return err


def write_results(path: str, meta: dict, results: list) -> None:
    """``{"meta": ..., "results": ...}``, atomically (:func:`write_json`)."""
    write_json(path, {"meta": meta, "results": results})


def check_device(device: str) -> None:
    """Stop with a one-line message (not a CUDA traceback) when ``device`` is cuda and none is present."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device}, but torch sees no CUDA device here; use --device cpu")


if __name__ == "__main__":
    main()
