"""The minimal end-to-end lmstack sample: curate a corpus, train a small LM, evaluate it, generate, save it.

    python example.py                 # ~1-2 minutes on a 2-core CPU, nothing downloaded
    python example.py --quick         # ~10 seconds (what the tests run)
    python example.py --steps 600 --device cuda --out runs/example

It is the seed's "Building a small LM" sample made real on a laptop: the corpus is the embedded default (the
Python standard library's own source and docs, PSF-2.0, already on the machine) curated by ``corpus`` (dedup,
PII redaction, quality filters) into token shards with a byte-level BPE tokenizer trained on the spot; a 1.3M-
parameter Llama-style model (RMSNorm, RoPE, SwiGLU, GQA) trains with ``Trainer.step`` as in the seed's loop;
held-out perplexity comes from ``eval.metrics.perplexity``; text from ``serve.generate.generate``; the model and
tokenizer are saved with ``save_pretrained`` into a directory that ``python -m serve --model DIR`` serves.
Everything it prints is also written to ``<out>/summary.json``; training curves go to ``<out>/logs`` (CSV) for
``python -m viz plot <out> -o curves.png``. More examples: examples/README.md.
"""

from __future__ import annotations

import os

# OpenMP threads spin while they wait (the default), so on a machine where another process holds a core every
# parallel region stalls: 2-5x slower on a busy 2-core laptop. Passive waiting costs little at this model size.
# It must be set before torch loads its OpenMP runtime; an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from corpus.pipeline import BuildConfig, build
from data.loader import build_dataloader
from eval.metrics import perplexity
from model.lm import TransformerLM
from serve.generate import generate
from specs.cli import run_cli
from specs.config import DataConfig, ModelConfig, RunConfig, TrainConfig, VizConfig
from specs.io import atomic_write_text
from train.trainer import Trainer
from viz.session import VizSession


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Sizes of one run; ``FULL`` is tuned to train in about a minute on 2 CPU cores, ``QUICK`` in seconds."""

    corpus_bytes: int  # embedded stdlib text fed to the curation pipeline
    tokenizer: str  # trained on the curated text by corpus.build
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    log_every: int
    eval_batches: int
    new_tokens: int


FULL = Recipe(corpus_bytes=2_000_000, tokenizer="bpe:2048", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
              d_ff=352, seq_len=64, batch_size=16, steps=400, lr=5e-3, warmup_steps=40, log_every=25,
              eval_batches=16, new_tokens=80)
QUICK = Recipe(corpus_bytes=300_000, tokenizer="bpe:512", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
               d_ff=172, seq_len=32, batch_size=8, steps=40, lr=5e-3, warmup_steps=5, log_every=10,
               eval_batches=4, new_tokens=24)
VAL_FRACTION = 0.05


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python example.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {FULL.steps}; "
                                                           f"{QUICK.steps} with --quick)")
    p.add_argument("--out", default="runs/example", help="output directory: corpus/, model/, logs/, summary.json")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--quick", action="store_true", help="a ~10-second variant (tiny corpus and model) for tests")
    p.add_argument("--data", default=None, help="an existing shard directory (python -m corpus.cli build ...) "
                                                "instead of curating the embedded corpus into <out>/corpus")
    p.add_argument("--prompt", default="    def __init__(self", help="prompt for the generation at the end")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often faster on a busy shared machine)")
    p.add_argument("--seed", type=int, default=0)
    return p


def curate(recipe: Recipe, outdir: Path) -> tuple[Path, str]:
    """Curate the embedded corpus into ``outdir`` (reused when an identical build is already there)."""
    cfg = BuildConfig(input=None, outdir=str(outdir), tokenizer=recipe.tokenizer, dedup=True, redact_pii=True,
                      embedded_budget_bytes=recipe.corpus_bytes, overwrite=True, progress=False)
    manifest = outdir / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("extra", {}).get("corpus", {}).get("config")
        if recorded == json.loads(json.dumps(cfg.deterministic_dict())):
            return outdir, "reused"
    report = build(cfg)
    docs, pii = report["documents"], sum(report["pii"]["counts"].values())
    return outdir, (f"curated {docs['kept']} of {docs['read']} stdlib files ({docs['removed_total']} removed, "
                    f"{pii} PII spans redacted)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    recipe = QUICK if args.quick else FULL
    steps = recipe.steps if args.steps is None else args.steps
    if steps < 1:
        parser.error(f"--steps must be a positive integer, got {steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    # 1. Data: curated shards -> a streaming loader of specs.batch.Batch (input_ids, labels, positions, ...).
    if args.data:
        shards, how = Path(args.data), "given"
    else:
        shards, how = curate(recipe, out / "corpus")
    dl = build_dataloader(str(shards), batch_size=recipe.batch_size, seq_len=recipe.seq_len, seed=args.seed,
                          epochs=None, val_fraction=VAL_FRACTION)
    val = build_dataloader(str(shards), batch_size=recipe.batch_size, seq_len=recipe.seq_len, split="val",
                           val_fraction=VAL_FRACTION, shuffle=False)
    tok = dl.load_tokenizer()
    print(f"corpus: {shards} ({how}); {dl.shards.num_tokens:,} tokens, tokenizer {recipe.tokenizer} "
          f"({tok.vocab_size} ids)")

    # 2. Model: the seed's ModelConfig, at laptop size. vocab rounded up to a multiple of 64 (matmul-friendly).
    cfg = ModelConfig(d_model=recipe.d_model, n_heads=recipe.n_heads, n_kv_heads=recipe.n_kv_heads,
                      n_layers=recipe.n_layers, d_ff=recipe.d_ff, vocab_size=-(-tok.vocab_size // 64) * 64,
                      max_seq_len=recipe.seq_len * 4, attn_impl="auto")
    model = TransformerLM(cfg)
    run = RunConfig(model=cfg, name="example",
                    data=DataConfig(path=str(shards), tokenizer=recipe.tokenizer, seq_len=recipe.seq_len,
                                    batch_size=recipe.batch_size, val_fraction=VAL_FRACTION, seed=args.seed),
                    train=TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps,
                                      log_every=recipe.log_every, out_dir=str(out), device=args.device,
                                      seed=args.seed, callbacks=()),
                    viz=VizConfig(backend=("csv",), log_every=recipe.log_every))
    viz = VizSession(run.viz, run_dir=str(out / "logs"), config=run.to_dict())
    trainer = Trainer(model, run, dl, tokenizer=tok, callbacks=[viz])
    print(f"model: {model.num_params():,} parameters ({cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.n_heads} heads / {cfg.kv_heads} KV heads) on {trainer.device}")

    # 3. Train: the seed's loop. step() is one optimizer step and returns the loss as a float.
    history: list[tuple[int, float]] = []
    window: list[float] = []
    bar = tqdm(total=steps, unit="step", dynamic_ncols=True, disable=not sys.stderr.isatty())
    t_train = time.perf_counter()
    for step, batch in enumerate(dl, start=1):
        loss = trainer.step(batch)
        window.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % recipe.log_every == 0 or step == steps:
            mean = sum(window) / len(window)
            history.append((step, mean))
            tps = trainer.tokens_seen / (time.perf_counter() - t_train)
            bar.write(f"step {step:4d}/{steps} | loss {mean:.3f} | ppl {perplexity(mean):8.1f} | {tps:,.0f} tok/s")
            window.clear()
        if step == steps:
            break
    bar.close()
    train_s = time.perf_counter() - t_train

    # 4. Held-out perplexity: data the model never trained on (the loader's fixed validation share).
    held_out = trainer.evaluate(val, max_batches=recipe.eval_batches)
    val_ppl = perplexity(held_out["loss"])
    print(f"held-out: loss {held_out['loss']:.3f} | ppl {val_ppl:.1f} "
          f"(uniform guess: ppl {tok.vocab_size}; first logged train ppl {perplexity(history[0][1]):.1f})")

    # 5. Inference: sample a continuation of the prompt (temperature 0.8, top-k 40, fixed seed).
    model.eval()
    prompt = torch.tensor([tok.encode(args.prompt)], device=trainer.device)
    ids = generate(model, prompt, max_new_tokens=recipe.new_tokens, tokenizer=tok, temperature=0.8, top_k=40,
                   seed=args.seed)
    text = tok.decode(ids[0].tolist(), skip_special_tokens=True)
    print(f"generated from {args.prompt!r}:\n{'-' * 60}\n{text}\n{'-' * 60}")

    # 6. Save: the tokenizer, then weights + config + model card beside it (each keeps the other's files).
    model_dir = out / "model"
    tok.save(model_dir)
    model.save_pretrained(model_dir, name="lmstack-example")
    viz.close()
    total_s = time.perf_counter() - t_start
    summary = {"steps": steps, "history": history, "first_loss": history[0][1], "final_loss": history[-1][1],
               "val_loss": held_out["loss"], "val_ppl": val_ppl, "prompt": args.prompt, "generated": text,
               "model_dir": str(model_dir), "params": model.num_params(), "train_seconds": train_s,
               "total_seconds": total_s, "device": str(trainer.device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"saved: {model_dir} (serve it: python -m serve --model {model_dir}); curves: python -m viz plot {out} "
          f"-o curves.png")
    print(f"done in {total_s:.0f}s (training {train_s:.0f}s)")
    if not math.isfinite(held_out["loss"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
