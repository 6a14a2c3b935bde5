"""``bench generate``: prefill and decode throughput of the decode loop for several batch sizes.

The loop is the ``lmstack.generators`` plugin (``default``: lmstack-serve's ``serve.generate.generate``), resolved
by name because eval does not import serve. For each batch size B and prompt length P: ``t1`` = time to generate
one token (the prefill plus one sample) and ``tN`` = time to generate N tokens, with EOS ignored so every row runs
N steps. Prefill tokens/s = B * P / t1; decode tokens/s = B * (N - 1) / (tN - t1). Medians over ``--repeat`` runs
after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from eval.bench import options
from eval.bench.common import report, timed
from eval.loading import generator, load_model
from specs.errors import LmstackError


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama-debug", help="checkpoint directory or preset name (random weights)")
    p.add_argument("--batch-sizes", type=options.counts(1), default="1,4,8", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=options.count(1), default=128)
    p.add_argument("--new-tokens", type=options.count(2, "the decode rate times the tokens after the first"),
                   default=32)
    p.add_argument("--repeat", type=options.count(1), default=3)
    p.add_argument("--warmup", type=options.count(0), default=1)
    p.add_argument("--device", type=options.device, default="auto", help=options.DEVICE_FORMS)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--generator", default="default", help="name in the lmstack.generators entry-point group")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device=args.device, dtype=args.dtype, seed=args.seed)
    generate = generator(args.generator)
    device = next(model.parameters()).device
    max_len = int(model.config.max_seq_len)
    if args.prompt_tokens + args.new_tokens > max_len:
        raise LmstackError(f"--prompt-tokens + --new-tokens = {args.prompt_tokens + args.new_tokens} exceeds the "
                           f"model's max_seq_len {max_len}")
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for b in args.batch_sizes:
        ids = torch.randint(0, int(model.config.vocab_size), (b, args.prompt_tokens), generator=g).to(device)

        def gen(n: int, ids: torch.Tensor = ids) -> None:
            generate(model, ids, n, ignore_eos=True)

        for _ in range(args.warmup):
            gen(args.new_tokens)
        t1 = statistics.median(timed(lambda: gen(1), device) for _ in range(args.repeat))
        tn = statistics.median(timed(lambda: gen(args.new_tokens), device) for _ in range(args.repeat))
        decode_s = tn - t1  # <= 0 only when timing noise swamps the decode steps: reported as null
        rows.append({"batch_size": b, "prefill_s": t1, "total_s": tn,
                     "prefill_tokens_per_s": b * args.prompt_tokens / t1,
                     "decode_tokens_per_s": b * (args.new_tokens - 1) / decode_s if decode_s > 0 else None,
                     "decode_ms_per_step": decode_s / (args.new_tokens - 1) * 1e3 if decode_s > 0 else None})
    params = sum(p.numel() for p in model.parameters())
    return report("generate", {k: v for k, v in vars(args).items() if k != "func"},
                  {"params": params, "rows": rows}, device=str(device))
