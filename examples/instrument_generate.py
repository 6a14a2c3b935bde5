"""The seed's quickstart snippet 3, runnable: instrument a serve loop with a VizSession.

    python examples/instrument_generate.py [CHECKPOINT] [--out runs/examples/instrument] [--backend csv jsonl]

The heart of it is the seed's three lines::

    from viz.session import VizSession
    viz = VizSession(cfg.viz)
    tokens = generate_instrumented(model, input_ids, viz=viz, max_new_tokens=128, step=global_step)

``generate_instrumented`` lives in ``serve.generate``. Each call decodes one prompt through the KV cache and logs,
at ``step``: time to first token, inter-token latency (mean, p50, p90, p99, max), decode and overall tokens/s,
prompt and new token counts and KV-cache occupancy (``serve/*`` scalars), plus the per-token latencies as a JSON
text record (JSONL / TensorBoard backends). Here a short loop serves a few prompts, one ``global_step`` each, then
reads the log back with ``viz.readers`` and prints a summary. ``python -m viz summary OUT`` and TensorBoard show the
same numbers. Without a checkpoint, a random-weight ``llama-debug`` model is used (the latencies are real either way).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from data.tokenizer import load_tokenizer
from model.lm import TransformerLM
from serve.generate import generate_instrumented
from specs.cli import run_cli
from specs.config import VizConfig
from specs.presets import preset
from viz.readers import load_scalars
from viz.session import VizSession

PROMPTS = ("def __init__(self", "import ", "class ", "    return ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/instrument_generate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", type=Path, default=None,
                   help="model directory with its tokenizer (default: random llama-debug + byte tokenizer)")
    p.add_argument("--out", type=Path, default=Path("runs/examples/instrument"), help="log directory")
    p.add_argument("--backend", nargs="+", default=["csv", "jsonl"], help="viz backends (csv jsonl tensorboard ...)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(argv)

    if args.checkpoint is None:
        torch.manual_seed(0)
        model, tok = TransformerLM(preset("llama-debug")).eval(), load_tokenizer("byte")
    else:
        model, tok = TransformerLM.from_pretrained(args.checkpoint).eval(), load_tokenizer(str(args.checkpoint))

    cfg_viz = VizConfig(backend=tuple(args.backend), log_dir=str(args.out))
    with VizSession(cfg_viz) as viz:
        for global_step, prompt in enumerate(PROMPTS, start=1):
            input_ids = torch.tensor([tok.encode(prompt)])
            # eos_token_id=() decodes all max_new_tokens, so every step measures the same amount of work.
            tokens = generate_instrumented(model, input_ids, viz=viz, max_new_tokens=args.max_new_tokens,
                                           step=global_step, eos_token_id=())
            text = tok.decode(tokens[0, input_ids.shape[1]:].tolist())
            print(f"step {global_step}: {prompt!r} -> {text[:48]!r}...")

    series = load_scalars(args.out)[0].series  # tag -> [(step, value), ...]; VizError if nothing was logged
    print(f"logged to {args.out} ({', '.join(args.backend)}); median over {len(PROMPTS)} steps:")
    for tag in ("serve/ttft_ms", "serve/itl_ms_p50", "serve/itl_ms_p99", "serve/decode_tokens_per_s",
                "serve/cache_occupancy"):
        if tag in series:
            print(f"  {tag:28s} {statistics.median(v for _, v in series[tag]):10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
