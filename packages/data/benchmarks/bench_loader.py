"""Loader throughput from mmap shards (tokens/s on one core), beside nanoGPT's get_batch as the baseline.

Plain script: ``python packages/data/benchmarks/bench_loader.py [--tokens 33554432] [--seconds 3]`` prints one
JSON object. It writes synthetic uint16 shards (GPT-2-sized vocab, random document lengths) to a temp dir, then
iterates ``build_dataloader(..., batch_size=8, seq_len=1024, num_workers=0)`` with ``torch.set_num_threads(1)``.
The baseline is nanoGPT's ``get_batch`` (train.py: a fresh ``np.memmap`` per batch, random offsets,
``torch.stack`` of the slices) over the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.loader import build_dataloader
from data.shards import ShardWriter


def _write(directory: Path, n_tokens: int) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(directory, vocab_size=50257, shard_size_tokens=1 << 24,
                     tokenizer={"spec": "synthetic", "fingerprint": "0" * 64, "pad_id": None}) as w:
        left = n_tokens
        while left > 0:
            n = int(min(left, rng.integers(200, 4000)))
            w.add_document(rng.integers(0, 50257, size=n, dtype=np.uint16))
            left -= n
    return directory


def _time(fn, seconds: float, tokens_per_call: int) -> dict[str, float]:
    """Wall-clock tokens/s, and tokens per CPU-second of this process (robust on a shared, loaded machine)."""
    for _ in range(20):  # warm the page cache and allocator
        fn()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    cpu = time.process_time() - c0
    return {"tokens_per_s": round(n * tokens_per_call / elapsed), "tokens_per_cpu_s": round(n * tokens_per_call / cpu),
            "batches": n, "seconds": round(elapsed, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32 << 20)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    B, T = args.batch_size, args.seq_len
    results: dict[str, object] = {"benchmark": "data.loader", "batch_size": B, "seq_len": T, "tokens": args.tokens,
                                  "threads": 1, "machine": platform.machine(), "python": platform.python_version(),
                                  "torch": torch.__version__, "numpy": np.__version__,
                                  "load_avg_1m": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        d = _write(Path(tmp) / "shards", args.tokens)
        for name, kw in {"packed": {}, "packed_doc_mask": {"doc_mask": True}, "unpacked": {"pack": False}}.items():
            dl = build_dataloader(d, batch_size=B, seq_len=T, epochs=None, **kw)
            it = iter(dl)
            results[name] = _time(lambda it=it: next(it), args.seconds, B * T)
        bin_path = str(next(d.glob("shard_*.bin")))

        def get_batch() -> tuple[torch.Tensor, torch.Tensor]:  # nanoGPT train.py, CPU branch
            data = np.memmap(bin_path, dtype=np.uint16, mode="r")
            ix = torch.randint(len(data) - T, (B,))
            x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
            return x, y

        results["baseline_nanogpt_get_batch"] = _time(get_batch, args.seconds, B * T)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
