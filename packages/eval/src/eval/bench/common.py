"""Shared pieces of the benchmarks: percentiles, timing, machine description and atomic JSON output."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from specs.io import atomic_write_text

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def hf_llama(model: torch.nn.Module, cfg: Any, dtype: torch.dtype, device: str) -> Any:
    """transformers' LlamaForCausalLM of ``cfg``'s shape holding ``model``'s weights (the baselines' twin)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
                         rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise RuntimeError(f"weights did not map onto LlamaForCausalLM: missing={missing} unexpected={unexpected}")
    return hf


def prefer_kernels(spec: str) -> dict[str, str]:
    """Make ``auto`` pick named kernels: ``"attention=sdpa,linear_cross_entropy=reference"`` raises each one's
    priority in the default registry and makes it the choice under torch.compile too (they still refuse requests
    they cannot serve). Returns the mapping."""
    import dataclasses

    from kernel import default_registry
    from kernel.registry import COMPILE_PREFERENCE

    chosen: dict[str, str] = {}
    reg = default_registry()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        op, _, name = item.partition("=")
        impl = reg.get(op.strip(), name.strip())
        reg.register(dataclasses.replace(impl, priority=1000), replace=True)
        COMPILE_PREFERENCE[impl.op] = impl.name  # else compiled code keeps its fusable defaults
        chosen[impl.op] = impl.name
    return chosen


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """mean and linear-interpolated percentiles (numpy's default) of ``values``; NaN when empty."""
    if not values:
        return {"mean": float("nan"), **{f"p{q}": float("nan") for q in qs}}
    s = sorted(values)
    out = {"mean": statistics.fmean(s)}
    for q in qs:
        pos = (len(s) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        out[f"p{q}"] = s[lo] + (s[hi] - s[lo]) * (pos - lo)
    return out


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# Kernel classes by name (first match wins; names from cuBLAS/cuDNN/CUTLASS, inductor and Triton), for a profile's
# summary; "other" is the rest. On a CPU the rows are aten operators by self time.
KERNEL_CLASSES: tuple[tuple[str, str], ...] = (
    ("attention", r"flash|fmha|cudnn|attention|sdpa"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|sm90_|sm80_|aten::(mm|addmm|bmm|matmul|linear)$"),
    ("optimizer", r"multi_tensor|adam|_foreach"),
    ("fused elementwise/reduction (inductor, Triton)", r"^triton_|^_[a-z]"),
    ("copy/fill", r"memcpy|memset|copy|fill|aten::(to|_to_copy|clone|zero_)$"),
)


GPU_EVENT_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_rows(events: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """``{name: [count, microseconds]}`` of the GPU kernels, copies and fills in a Chrome trace's events (torch
    profiler's export). A kernel's launch grid joins its name (``_skinny grid=80x1x1``), so one Triton kernel run at
    several shapes (the decode step's projections) shows as one row per shape."""
    rows: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in GPU_EVENT_CATEGORIES:
            continue
        r = rows.setdefault(_gpu_name(e), [0, 0.0])
        r[0] += 1
        r[1] += float(e.get("dur", 0.0))
    return rows


def _gpu_name(e: dict[str, Any]) -> str:
    grid = (e.get("args") or {}).get("grid")
    return e.get("name", "?") + (f" grid={'x'.join(str(g) for g in grid)}" if grid else "")


def _exposed_spans(events: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """``(name, exposed us)`` of every GPU event in the order they started (see :func:`exposed_gpu_us`)."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), _gpu_name(e)) for e in events
                   if e.get("ph") == "X" and e.get("cat") in GPU_EVENT_CATEGORIES and "ts" in e)
    out = []
    last = float("-inf")
    for start, end, name in spans:
        out.append((name, max(0.0, end - max(start, last))))
        last = max(last, end)
    return out


def exposed_gpu_us(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``{name: microseconds}`` (names as :func:`gpu_rows` gives them): how far each GPU event moved the end of the
    GPU's busy time: its end minus the later of its start and the latest end of the events that started before it
    (0 when that is later than its own end). Summed over names this is the union of the events' intervals, so it
    splits a chain of kernels' wall time between them. A kernel launched early that waits inside on its
    predecessor (programmatic dependent launch) counts only what it ran past that predecessor's end; its plain
    duration (:func:`gpu_rows`) counts the wait too."""
    out: dict[str, float] = {}
    for name, us in _exposed_spans(events):
        out[name] = out.get(name, 0.0) + us
    return out


def exposed_gpu_chain(events: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """``{(previous name, name): [count, exposed microseconds]}``: :func:`exposed_gpu_us` split by the event that
    started just before each one ("" for the first). One kernel launched at several places of a step with the same
    grid (a decode layer's q/k/v and o projections) gets a row per place, told apart by what runs before it."""
    out: dict[tuple[str, str], list[float]] = {}
    prev = ""
    for name, us in _exposed_spans(events):
        r = out.setdefault((prev, name), [0, 0.0])
        r[0] += 1
        r[1] += us
        prev = name
    return out


def profiled_gpu_rows(prof: Any) -> dict[str, list[float]]:
    """:func:`gpu_rows` of a finished profile; by name alone (``prof.events()``) if its trace has no kernel events."""
    return profiled_gpu(prof)[0]


def profiled_gpu(prof: Any) -> tuple[dict[str, list[float]], dict[str, float], dict[tuple[str, str], list[float]]]:
    """A finished profile's :func:`gpu_rows`, :func:`exposed_gpu_us` and :func:`exposed_gpu_chain`, from one export of
    its trace. With no kernel events in the trace the rows come by name alone (``prof.events()``) and the exposed
    times are empty."""
    events = trace_events(prof)
    rows = gpu_rows(events)
    if rows:
        return rows, exposed_gpu_us(events), exposed_gpu_chain(events)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            r = rows.setdefault(e.name, [0, 0.0])
            r[0] += 1
            r[1] += e.time_range.elapsed_us()
    return rows, {}, {}


def trace_events(prof: Any) -> list[dict[str, Any]]:
    """The events of a finished ``torch.profiler.profile`` as its Chrome-trace export has them (launch grids
    included, which ``prof.events()`` lacks)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)


def profile_kernels(fn: Any, steps: int, device: str | torch.device, top: int = 25) -> dict[str, Any]:
    """Where ``fn``'s device time goes: ``fn()`` once to warm up, then ``steps`` calls under torch.profiler. On
    CUDA every GPU kernel (CUDA-graph replays included) by name and grid (:func:`gpu_rows`); on a CPU every aten
    operator by self time. Per call:
    ``kernels_per_step``, ``kernel_us_per_step``, ``by_class`` (us per :data:`KERNEL_CLASSES` class) and the
    ``top`` rows by time."""
    import re

    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    rows: dict[str, list[float]] = {}
    if cuda:
        rows = profiled_gpu_rows(prof)
    else:
        for a in prof.key_averages():
            if a.key.startswith("aten::") and a.self_cpu_time_total > 0:
                rows[a.key] = [a.count, a.self_cpu_time_total]
    table = sorted(({"kernel": name[:120], "per_step": n / steps, "us_per_step": us / steps}
                    for name, (n, us) in rows.items()), key=lambda r: -r["us_per_step"])
    by_class: dict[str, float] = {}
    for r in table:
        cls = next((c for c, pat in KERNEL_CLASSES if re.search(pat, r["kernel"], re.I)), "other")
        by_class[cls] = by_class.get(cls, 0.0) + r["us_per_step"]
    return {"kernels_per_step": sum(r["per_step"] for r in table),
            "kernel_us_per_step": sum(r["us_per_step"] for r in table),
            "by_class": dict(sorted(by_class.items(), key=lambda kv: -kv[1])), "top": table[:top]}


def timed(fn: Any, device: str | torch.device) -> float:
    """Seconds ``fn()`` takes, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def machine(device: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if device and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def report(name: str, args: dict[str, Any], results: Any, device: str | None = None) -> dict[str, Any]:
    return {"bench": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(device), "args": args, "results": results}


def write_json(path: str | os.PathLike[str], doc: Any) -> None:
    """Write ``doc`` as JSON atomically (:func:`specs.io.atomic_write_text`: a ConfigError naming ``path`` when it is
    a directory or cannot be written, and an existing file is kept until the new one replaces it)."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
