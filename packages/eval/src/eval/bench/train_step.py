"""``bench train-step``: tokens/s of forward + backward + AdamW step for a preset built through the resolver.

The model comes from the ``lmstack.models`` plugin named by the preset's ``arch``; its ``loss(input_ids, labels)``
is the training objective (the same call the trainer makes). Random tokens, fixed shapes, ``--warmup`` untimed
steps, then the median step time over ``--steps`` timed steps.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from eval.bench import options
from eval.bench.common import report, timed
from eval.loading import pick_device, pick_dtype
from specs.errors import LmstackError
from specs.plugins import resolve
from specs.presets import PRESETS, preset


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="llama-debug", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=options.count(1), default=8)
    p.add_argument("--seq-len", type=options.count(2), default=128)
    p.add_argument("--steps", type=options.count(1), default=5)
    p.add_argument("--warmup", type=options.count(0), default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--device", type=options.device, default="auto", help=options.DEVICE_FORMS)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="autocast dtype for the forward pass (auto: fp32)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = preset(args.preset)
    if args.seq_len > cfg.max_seq_len:
        raise LmstackError(f"--seq-len {args.seq_len} exceeds {args.preset}'s max_seq_len {cfg.max_seq_len}")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = resolve("lmstack.models", cfg.arch)(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    amp = pick_dtype(args.dtype)
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=g).to(device)
    ids, labels = tokens[:, :-1], tokens[:, 1:]
    losses: list[float] = []

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            loss = model.loss(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    for _ in range(args.warmup):
        step()
    times = [timed(step, device) for _ in range(args.steps)]
    t = statistics.median(times)
    n_tokens = args.batch_size * args.seq_len
    return report("train-step", {k: v for k, v in vars(args).items() if k != "func"},
                  {"params": sum(p.numel() for p in model.parameters()), "tokens_per_step": n_tokens,
                   "step_ms": t * 1e3, "tokens_per_s": n_tokens / t, "first_loss": losses[0],
                   "last_loss": losses[-1]}, device=device)
