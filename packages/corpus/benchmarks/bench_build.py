"""Corpus build throughput (MB/s of input) with dedup and PII redaction on, over the embedded stdlib corpus.

Plain script: ``python packages/corpus/benchmarks/bench_build.py [--budget-bytes 8388608] [--workers 2]`` prints
one JSON object: wall-clock MB/s of the full build (read, normalise, quality, exact + MinHash-LSH dedup, PII,
byte tokenizer, shards) for each worker count, beside the baseline of the same build with dedup and PII off
(reading, normalising, quality filters, tokenizing and writing only). CPU seconds are reported too, since a
shared machine's wall clock depends on its other load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from corpus.pipeline import BuildConfig, build


def _cpu() -> float:
    self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def _run(budget: int, workers: int, dedup_pii: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BuildConfig(input=None, outdir=str(Path(tmp) / "out"), dedup=dedup_pii, redact_pii=dedup_pii,
                          workers=workers, embedded_budget_bytes=budget, progress=False)
        c0, t0 = _cpu(), time.perf_counter()
        report = build(cfg)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    mb = report["bytes"]["read"] / 1e6
    return {"input_mb": round(mb, 3), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "mb_per_s_wall": round(mb / wall, 3), "mb_per_s_per_cpu_s": round(mb / cpu, 3),
            "documents_kept": report["documents"]["kept"], "removed": report["documents"]["removed"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-bytes", type=int, default=8 << 20)
    p.add_argument("--workers", type=int, nargs="+", default=[1, min(2, os.cpu_count() or 1)])
    args = p.parse_args()
    out: dict[str, object] = {"benchmark": "corpus.build", "corpus": "embedded python stdlib",
                              "cpus": os.cpu_count(), "machine": platform.machine(),
                              "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}
    out["baseline_no_dedup_no_pii_workers_1"] = _run(args.budget_bytes, 1, False)
    for w in dict.fromkeys(args.workers):
        out[f"dedup_pii_workers_{w}"] = _run(args.budget_bytes, w, True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
