"""Benchmark: TransformerLM against transformers' LlamaForCausalLM / GPT2LMHeadModel with the same weights.

Forward (no grad) and one AdamW training step, timed interleaved (ours, theirs, ours, ...) in one process so both
see the same machine load; prints the median and min of each and writes JSON with ``--out``. The transformers model
is loaded from our ``save_pretrained(format="hf")`` directory, so the run also checks the logits agree. A benchmark,
not a test: run it by hand and put the figures, machine and date in docs/benchmarks.md.

    python packages/model/benchmarks/bench_vs_transformers.py --preset llm-small --batch 4 --seq 256
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
import transformers

from kernel import resolve
from model.lm import TransformerLM
from specs.presets import PRESETS, preset


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llm-small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per model (after one warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loss", choices=["fused", "logits"], default="fused",
                    help="ours: TransformerLM.loss (fused linear+CE op) or full logits + the cross_entropy op")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    ours = TransformerLM(cfg).to(args.device)
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, format="hf")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa").to(args.device)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        max_diff = (ours(x) - theirs(x).logits).abs().max().item()
    ours.train()
    theirs.train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def fwd_ours():
        with torch.no_grad():
            ours(x)

    def fwd_theirs():
        with torch.no_grad():
            theirs(x)

    ce = resolve("cross_entropy", "auto", device=args.device, dtype=torch.float32, backward=True)

    def step_ours():
        opt_ours.zero_grad(set_to_none=True)
        loss = ours.loss(x, x) if args.loss == "fused" else ce(ours(x).flatten(0, 1), x.flatten())
        loss.backward()
        opt_ours.step()

    def step_theirs():
        opt_theirs.zero_grad(set_to_none=True)
        theirs(x, labels=x).loss.backward()
        opt_theirs.step()

    results: dict = {"preset": args.preset, "loss": args.loss, "batch": args.batch, "seq": args.seq,
                     "device": args.device,
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "machine": platform.processor() or platform.machine(),
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "params": ours.num_params(), "max_abs_logit_diff": max_diff}
    for what, a, b in (("forward", fwd_ours, fwd_theirs), ("train_step", step_ours, step_theirs)):
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(args.iters):
            ta.append(timed(a))
            tb.append(timed(b))
        results[what] = {"lmstack_median_s": statistics.median(ta), "transformers_median_s": statistics.median(tb),
                         "lmstack_min_s": min(ta), "transformers_min_s": min(tb),
                         "speedup_median": statistics.median(tb) / statistics.median(ta)}
        r = results[what]
        print(f"{what:10s} lmstack {r['lmstack_median_s'] * 1e3:8.1f} ms   transformers "
              f"{r['transformers_median_s'] * 1e3:8.1f} ms   (x{r['speedup_median']:.2f})", flush=True)
    print(f"max |logit diff| {max_diff:.2e}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
