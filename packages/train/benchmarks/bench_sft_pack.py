"""Benchmark: chat SFT steps with conversations packed into rows (``data.pack`` + ``data.doc_mask``: best-fit
decreasing, document masks, restarted positions) against one conversation a row (padded to the batch's longest),
the same model, conversations and step size in tokens, one process, one after the other.

The conversations are synthetic (byte tokenizer, ChatML), their lengths drawn uniformly from ``--min``..``--max``
tokens. A step holds ``--rows`` rows of at most ``--seq-len`` tokens either way; the figure is target tokens (the
assistant's) trained a second, median over ``--steps`` steps after ``--warmup``. A benchmark, not a test: put the
figures, card and date in docs/benchmarks.md.

    python packages/train/benchmarks/bench_sft_pack.py --preset llama-1b --seq-len 2048 --rows 8 --steps 10
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from data.sft import build_chat_dataloader
from model.lm import TransformerLM
from specs.config import DataConfig, RunConfig, TrainConfig
from specs.presets import PRESETS, preset
from train.trainer import Trainer

WORDS = ("the", "model", "learns", "to", "answer", "questions", "about", "many", "things", "in", "a", "few", "short",
         "words")


def _count(low: int):
    def parse(text: str) -> int:
        v = int(text)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    return parse


def conversations(n: int, low: int, high: int, seed: int) -> list[dict]:
    """``n`` prompt/completion pairs of about ``low``..``high`` bytes together (a third prompt, the rest answer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.randint(low, high)

        def text(chars: int) -> str:
            words = []
            while sum(len(w) + 1 for w in words) < chars:
                words.append(rng.choice(WORDS))
            return " ".join(words)

        out.append({"prompt": text(size // 3), "completion": text(size - size // 3)})
    return out


class _Clock:
    """Step-end timestamps (an lmstack Trainer callback)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step(self, trainer, step, metrics):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def run(args: argparse.Namespace, path: Path, packed: bool) -> dict:
    """One Trainer over the conversations, packed or not; its step times and target tokens a second."""
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    cfg = preset(args.preset, max_seq_len=max(args.seq_len, 128), vocab_size=512)
    loader = build_chat_dataloader(path, args.rows, args.seq_len, tokenizer="byte", shuffle=False, epochs=None,
                                   pack=packed, doc_mask=packed)
    batches = [b for _, b in zip(range(args.warmup + args.steps), iter(loader))]  # what the Trainer will see
    targets = [int((b.labels != -100).sum()) for b in batches]
    fill = sum(int(b.attention_mask.sum()) for b in batches) / sum(b.attention_mask.numel() for b in batches)
    loader = build_chat_dataloader(path, args.rows, args.seq_len, tokenizer="byte", shuffle=False, epochs=None,
                                   pack=packed, doc_mask=packed)
    data = DataConfig(dataset="chat", path=str(path), seq_len=args.seq_len, batch_size=args.rows, pack=packed,
                      doc_mask=packed)
    train = TrainConfig(lr=1e-5, warmup_steps=0, log_every=10**6, out_dir=str(path.parent / f"run-{packed}"),
                        precision="bf16" if cuda else "fp32", ckpt_final=False, callbacks=(), schedule="constant")
    clock = _Clock()
    model = TransformerLM(cfg)
    trainer = Trainer(model, RunConfig(model=cfg, data=data, train=train), loader, callbacks=[clock])
    start = time.perf_counter()
    trainer.fit(steps=args.warmup + args.steps)
    ends = [start, *clock.ends]
    times = [b - a for a, b in zip(ends[:-1], ends[1:])][args.warmup:]
    per_s = [t / s for t, s in zip(targets[args.warmup:], times)]
    return {"rows": len(loader.bins), "conversations": len(loader.rows), "step_s": statistics.median(times),
            "target_tokens_per_s": statistics.median(per_s), "real_token_share": fill}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-debug", choices=sorted(PRESETS))
    ap.add_argument("--seq-len", type=_count(64), default=512)
    ap.add_argument("--rows", type=_count(1), default=4)
    ap.add_argument("--conversations", type=_count(2), default=512)
    ap.add_argument("--min", type=_count(1), default=64)
    ap.add_argument("--max", type=_count(1), default=400)
    ap.add_argument("--steps", type=_count(1), default=5)
    ap.add_argument("--warmup", type=_count(0), default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.max + 64 > args.seq_len:
        ap.error(f"--max {args.max} plus the template's ~60 tokens must fit --seq-len {args.seq_len}")
    work = Path(tempfile.mkdtemp())
    path = work / "chat.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations(args.conversations, args.min, args.max, 0)))
    results = {"one a row": run(args, path, False), "packed": run(args, path, True)}
    doc = {"bench": "sft_pack", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "args": vars(args),
           "results": results,
           "speedup": results["packed"]["target_tokens_per_s"] / results["one a row"]["target_tokens_per_s"]}
    print(json.dumps(doc, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
