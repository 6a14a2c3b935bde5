"""Ablation: RoPE vs ALiBi vs learned absolute positions vs no positional encoding (NoPE), and how each does on
contexts longer than it was trained on.

    python experiments/pos_encoding/run.py                    # 400 steps per variant, ~3 minutes on 2 CPU cores
    python experiments/pos_encoding/run.py --steps 50 --variants rope alibi --out /tmp/pe

Same data, same seed, same model otherwise (a Llama-style decoder: RMSNorm, SwiGLU, 4 layers, d_model 128), one
``specs.config.ModelConfig.pos_encoding`` changed. Training text is the embedded corpus (Python stdlib source and
docs) curated by ``corpus`` with a bpe:2048 tokenizer, in windows of ``--seq-len`` tokens. Held-out text is stdlib
files the selection did not include (never trained on), cut into windows of ``4 x seq-len`` tokens: the mean loss
over the first ``seq-len`` positions is the ordinary held-out loss (causal attention: position t sees only tokens
0..t, exactly as in a window of seq-len), the loss over positions ``seq-len .. 4 x seq-len`` measures length
extrapolation, the question of Press et al. 2022 ("Train Short, Test Long: Attention with Linear Biases", ALiBi,
arXiv:2108.12409) and Kazemnejad et al. 2023 ("The Impact of Positional Encoding on Length Generalization",
NoPE, arXiv:2305.19466); RoPE is Su et al. 2021 (arXiv:2104.09864), learned positions GPT-2's.

Writes ``results.md`` (table and settings), ``results.json`` (every number, per-step losses included) and
``curves.png`` (training loss; held-out loss by position) into ``--out`` (default: this directory).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from corpus.normalize import normalize
from corpus.pipeline import BuildConfig, build
from data.embedded import embedded_files, read_embedded
from data.loader import build_dataloader
from eval.metrics import perplexity
from model.lm import TransformerLM
from specs.cli import run_cli
from specs.config import DataConfig, ModelConfig, RunConfig, TrainConfig

HERE = Path(__file__).resolve().parent
VARIANTS = ("rope", "alibi", "learned", "none")
CORPUS_BYTES = 2_000_000
TOKENIZER = "bpe:2048"


@dataclass(frozen=True, kw_only=True)
class Settings:
    steps: int
    seq_len: int
    batch_size: int
    lr: float
    seed: int
    extrapolate: int  # held-out windows are extrapolate x seq_len tokens
    eval_windows: int


def curate(outdir: Path) -> Path:
    """The training shards (reused when an identical build is already there)."""
    cfg = BuildConfig(input=None, outdir=str(outdir), tokenizer=TOKENIZER, dedup=True, redact_pii=True,
                      embedded_budget_bytes=CORPUS_BYTES, overwrite=True, progress=False)
    manifest = outdir / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("extra", {}).get("corpus", {}).get("config")
        if recorded == json.loads(json.dumps(cfg.deterministic_dict())):
            return outdir
    build(cfg)
    return outdir


def held_out_windows(tok, length: int, count: int) -> torch.Tensor:
    """(count, length + 1) token windows from stdlib files outside the training selection, EOS between files."""
    seen = {f.relpath for f in embedded_files(CORPUS_BYTES)}
    unseen = [f for f in embedded_files(CORPUS_BYTES * 4) if f.relpath not in seen]
    stream: list[int] = []
    need = count * (length + 1)
    for _, text in read_embedded(unseen):
        stream += tok.encode(normalize(text), add_eos=True)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise SystemExit(f"error: only {len(stream)} held-out tokens, need {need}; lower --eval-windows")
    return torch.tensor(stream[:need]).view(count, length + 1)


@torch.no_grad()
def loss_by_position(model: TransformerLM, windows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Mean next-token loss at each position (L,) over the held-out windows (N, L + 1)."""
    model.eval()
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch]
        logits = model(w[:, :-1]).float()  # (b, L, V)
        ce = F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")  # (b, L)
        total += ce.double().sum(0)
    return total / windows.shape[0]


def train_variant(name: str, shards: Path, tok, s: Settings, windows: torch.Tensor) -> dict:
    torch.manual_seed(s.seed)
    cfg = ModelConfig(d_model=128, n_heads=4, n_layers=4, d_ff=352, vocab_size=-(-tok.vocab_size // 64) * 64,
                      max_seq_len=s.seq_len * s.extrapolate, pos_encoding=name)
    model = TransformerLM(cfg)
    dl = build_dataloader(str(shards), batch_size=s.batch_size, seq_len=s.seq_len, seed=s.seed, epochs=None)
    from train.trainer import Trainer

    run = RunConfig(model=cfg, name=f"pos-{name}",
                    data=DataConfig(path=str(shards), tokenizer=TOKENIZER, seq_len=s.seq_len,
                                    batch_size=s.batch_size, seed=s.seed),
                    train=TrainConfig(steps=s.steps, lr=s.lr, warmup_steps=max(1, s.steps // 10), seed=s.seed,
                                      out_dir=f"runs/experiments/pos_encoding/{name}", callbacks=(), device="cpu"))
    trainer = Trainer(model, run, dl)
    losses = []
    t0 = time.perf_counter()
    for step, batch in enumerate(dl, start=1):
        losses.append(trainer.step(batch))
        if step % 50 == 0 or step == s.steps:
            print(f"  {name:8s} step {step:4d}/{s.steps} loss {sum(losses[-50:]) / len(losses[-50:]):.3f}",
                  flush=True)
        if step == s.steps:
            break
    seconds = time.perf_counter() - t0
    by_pos = loss_by_position(model, windows)
    T = s.seq_len
    in_len, beyond = by_pos[:T].mean().item(), by_pos[T:].mean().item()
    tail = losses[-max(1, s.steps // 10):]
    return {"variant": name, "params": model.num_params(), "train_loss": sum(tail) / len(tail),
            "val_loss": in_len, "val_ppl": perplexity(in_len), "val_loss_beyond": beyond,
            "val_ppl_beyond": perplexity(beyond), "tokens_per_s": s.steps * s.batch_size * T / seconds,
            "train_seconds": seconds, "losses": losses, "loss_by_position": by_pos.tolist()}


def write_table(results: list[dict], s: Settings, out: Path, threads: int) -> None:
    T, L = s.seq_len, s.seq_len * s.extrapolate
    lines = [
        "# Positional encodings: RoPE vs ALiBi vs learned vs none",
        "",
        f"{s.steps} steps x {s.batch_size} x {T} tokens per variant, lr {s.lr} (cosine, 10% warmup), seed {s.seed}; "
        f"held-out: {s.eval_windows} windows of {L} tokens from stdlib files never trained on. "
        "Train loss: mean of the last 10% of steps. Held-out @T: positions 0..T-1 (the trained length); "
        f"beyond T: positions {T}..{L - 1}. Perplexity is exp(loss) (eval.metrics.perplexity).",
        "",
        f"| pos_encoding | params | train loss | held-out loss @T={T} | held-out ppl @T | "
        f"held-out loss, positions {T}-{L - 1} | ppl beyond T | train tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['train_loss']:.3f} | {r['val_loss']:.3f} | "
                     f"{r['val_ppl']:.1f} | {r['val_loss_beyond']:.3f} | {r['val_ppl_beyond']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} |")
    lines += ["", f"Machine: {platform.machine()} {platform.system()}, {threads} torch thread(s), "
                  f"torch {torch.__version__}, Python {platform.python_version()}; "
                  f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}. Tokens/s were measured on a shared machine "
                  "and are only comparable within this table.",
              "", f"Reproduce: `python experiments/pos_encoding/run.py --steps {s.steps} --seq-len {T} --batch-size "
                  f"{s.batch_size} --lr {s.lr} --extrapolate {s.extrapolate} --eval-windows {s.eval_windows} --seed "
                  f"{s.seed} --threads {threads} --variants {' '.join(r['variant'] for r in results)}`.", ""]
    (out / "results.md").write_text("\n".join(lines))


def plot(results: list[dict], s: Settings, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    k = max(1, s.steps // 30)
    bucket = 16
    for r in results:
        x = r["losses"]
        smooth = [sum(x[max(0, i - k + 1):i + 1]) / len(x[max(0, i - k + 1):i + 1]) for i in range(len(x))]
        a.plot(range(1, len(x) + 1), smooth, label=r["variant"])
        pos = r["loss_by_position"]
        xs = [i + bucket / 2 for i in range(0, len(pos), bucket)]
        ys = [sum(pos[i:i + bucket]) / len(pos[i:i + bucket]) for i in range(0, len(pos), bucket)]
        b.plot(xs, ys, label=r["variant"])
    a.set(title=f"training loss ({k}-step moving mean)", xlabel="step", ylabel="loss (nats/token)")
    a.set_ylim(top=min(8.0, a.get_ylim()[1]))
    b.axvline(s.seq_len, color="gray", linestyle="--", linewidth=1)
    b.text(s.seq_len, 0.97, " trained length", va="top", fontsize=8, color="gray", transform=b.get_xaxis_transform())
    b.set(title=f"held-out loss by position ({bucket}-token buckets)", xlabel="position in window", ylabel="loss")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/pos_encoding/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seq-len", type=int, default=64, help="training context T")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--extrapolate", type=int, default=4, help="held-out windows are this many times T")
    p.add_argument("--eval-windows", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier tokens/s on a shared box)")
    p.add_argument("--out", type=Path, default=HERE, help="where results.md, results.json and curves.png go")
    p.add_argument("--corpus-dir", type=Path, default=Path("runs/experiments/pos_encoding/corpus"))
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be positive")
    torch.set_num_threads(args.threads)
    s = Settings(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                 extrapolate=args.extrapolate, eval_windows=args.eval_windows)
    shards = curate(args.corpus_dir)
    tok = build_dataloader(str(shards), batch_size=1, seq_len=8).load_tokenizer()
    windows = held_out_windows(tok, s.seq_len * s.extrapolate, s.eval_windows)
    print(f"corpus {shards}; held-out {tuple(windows.shape)} tokens; variants {', '.join(args.variants)}")
    results = [train_variant(v, shards, tok, s, windows) for v in args.variants]
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"settings": s.__dict__, "threads": args.threads, "results": results}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_table(results, s, args.out, args.threads)
    plot(results, s, args.out)
    print((args.out / "results.md").read_text())
    bad = [r["variant"] for r in results if not math.isfinite(r["val_loss"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
