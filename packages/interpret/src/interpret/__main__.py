"""``python -m interpret``: the logit lens, causal tracing, SAE training and head scores from the command line.

    python -m interpret lens  --model DIR --text "The capital of France is" [--target " Paris"] [--k 3] [--json]
    python -m interpret trace --model DIR --text "The Eiffel Tower is in the city of" --subject "Eiffel Tower"
                              --target " Paris" [--point resid_post|mlp_out|attn_out] [--window 1] [--json]
    python -m interpret sae   --model DIR --data corpus.txt --layer 6 --d-sae 4096 --k 32 --out sae/ [--steps N]
    python -m interpret heads --model DIR [--text "..."] [--induction-len 50] [--top 5] [--json]

``--model`` is a checkpoint directory (lmstack or Hugging Face) or a preset name (random weights); models and
tokenizers come through the ``lmstack.models`` / ``lmstack.tokenizers`` plugins. Errors are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from interpret.lens import lens_report
from interpret.patching import causal_trace
from interpret.patterns import SCORES, attention_patterns, head_scores, induction_scores
from interpret.sae import sae_metrics, train_sae
from specs.errors import LmstackError
from specs.plugins import resolve
from specs.presets import PRESETS, preset


def load(name: str, device: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a checkpoint directory or a preset name."""
    path = Path(name)
    if path.is_dir():
        arch = "transformer"
        cfg = path / "config.json"
        if cfg.is_file():
            doc = json.loads(cfg.read_text())
            arch = doc.get("arch", "transformer") if isinstance(doc, dict) else "transformer"
        model = resolve("lmstack.models", arch).from_pretrained(path, device=device)
        tok = resolve("lmstack.tokenizers", "auto")(str(path))
    elif name in PRESETS:
        torch.manual_seed(0)
        cfg = preset(name)
        model = resolve("lmstack.models", cfg.arch)(cfg).to(device)
        tok = resolve("lmstack.tokenizers", "auto")("byte")
    else:
        raise LmstackError(f"--model {name!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")
    return model.eval(), tok


def subject_positions(tok: Any, text: str, ids: list[int], subject: str) -> list[int]:
    """The positions of the tokens of ``ids`` (``text`` encoded) that overlap ``subject``'s first occurrence in the
    text, by the decoded length of each prefix."""
    start = text.find(subject)
    if start < 0:
        raise LmstackError(f"--subject {subject!r} does not occur in --text {text!r}")
    end = start + len(subject)
    lengths = [len(tok.decode(ids[:i])) for i in range(len(ids) + 1)]
    shift = len(tok.decode(ids)) - len(text)  # text a tokenizer adds in front when decoding (none for most)
    out = [i for i in range(len(ids)) if lengths[i] - shift < end and lengths[i + 1] - shift > start]
    if not out:
        raise LmstackError(f"no token of the text covers --subject {subject!r}")
    return out


def _lens(args: argparse.Namespace) -> dict[str, Any]:
    model, tok = load(args.model, args.device)
    return lens_report(model, tok, args.text, k=args.k, position=args.position, target=args.target)


def _trace(args: argparse.Namespace) -> dict[str, Any]:
    model, tok = load(args.model, args.device)
    ids = list(tok.encode(args.text))
    subject = subject_positions(tok, args.text, ids, args.subject)
    target = list(tok.encode(args.target))
    if not target:
        raise LmstackError(f"--target {args.target!r} encodes to no tokens")
    device = next(model.parameters()).device
    r = causal_trace(model, torch.tensor([ids], device=device), subject, target[0], noise=args.noise,
                     samples=args.samples, seed=args.seed, point=args.point, window=args.window)
    return {"tokens": [tok.decode([t]) for t in ids], "subject": subject, "target": tok.decode(target[:1]),
            "point": args.point, "window": args.window, "clean": r.clean, "corrupt": r.corrupt,
            "effects": r.effects.tolist()}


def _sae(args: argparse.Namespace) -> dict[str, Any]:
    from interpret.cache import capture

    model, tok = load(args.model, args.device)
    text = Path(args.data).read_text()
    ids = list(tok.encode(text))[: args.max_tokens]
    if len(ids) < args.seq_len:
        raise LmstackError(f"--data gives {len(ids)} tokens, fewer than one --seq-len of {args.seq_len}")
    device = next(model.parameters()).device
    chunks = torch.tensor(ids[: len(ids) // args.seq_len * args.seq_len], device=device).view(-1, args.seq_len)
    acts = torch.cat([capture(model, c[None], points=(args.point,), layers=[args.layer])[args.point, args.layer][0]
                      for c in chunks])
    result = train_sae(acts, args.d_sae, k=args.k, steps=args.steps, batch_size=min(args.batch_size, len(acts)),
                       lr=args.lr, seed=args.seed)
    result.sae.save(args.out, model=str(args.model), hook_name=f"{args.point}.{args.layer}", layer=args.layer,
                    point=args.point, tokens=len(acts))
    return {"out": str(args.out), "activations": len(acts), **sae_metrics(result.sae, acts)}


def _heads(args: argparse.Namespace) -> dict[str, Any]:
    model, tok = load(args.model, args.device)
    device = next(model.parameters()).device
    scores: dict[str, torch.Tensor] = {}
    if args.text:
        ids = list(tok.encode(args.text))
        if len(ids) < 2:
            raise LmstackError(f"--text {args.text!r} encodes to {len(ids)} token(s); the scores need two or more")
        scores.update(head_scores(attention_patterns(model, torch.tensor([ids], device=device))))
    if args.induction_len:
        vocab = min(int(tok.vocab_size), int(model.config.vocab_size))
        scores["induction"] = induction_scores(model, vocab, seq_len=args.induction_len, batch=args.batch,
                                               seed=args.seed, bos=getattr(tok, "bos_id", None))
    if not scores:
        raise LmstackError("nothing to score: give --text and/or --induction-len above 0")
    return {name: {"scores": t.tolist(), "top": _top(t, args.top, largest=name != "entropy")}
            for name, t in scores.items()}


def _top(t: torch.Tensor, k: int, *, largest: bool) -> list[dict[str, Any]]:
    """The ``k`` (layer, head) cells of an (L, H) score with the largest values (smallest for entropy)."""
    flat = t.flatten()
    order = flat.argsort(descending=largest)[:k].tolist()
    return [{"layer": i // t.shape[1], "head": i % t.shape[1], "score": float(flat[i])} for i in order]


def _print(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json or args.cmd == "sae":
        print(json.dumps(doc, indent=2))
    elif args.cmd == "heads":
        for name, d in doc.items():
            best = "  ".join(f"L{c['layer']}H{c['head']} {c['score']:.3f}" for c in d["top"])
            print(f"{name:>15}: {best}")
    elif args.cmd == "lens":
        print(f"position {doc['position']} ({doc['tokens'][doc['position']]!r}); the lens at each layer:")
        for row in doc["layers"]:
            top = "  ".join(f"{t!r} {p:.3f}" for t, p in row["top"])
            extra = f"  target p={row['target_prob']:.3f} rank {row['target_rank']}" if "target_prob" in row else ""
            print(f"  layer {row['layer']:>3}  KL {row['kl_to_final']:7.3f}  {top}{extra}")
    else:
        print(f"p({doc['target']!r}) clean {doc['clean']:.4f}, corrupted {doc['corrupt']:.4f}; restored {doc['point']}"
              f" (window {doc['window']}), layer x token:")
        print("        " + " ".join(f"{t[:8]:>8}" for t in doc["tokens"]))
        for layer, row in enumerate(doc["effects"]):
            print(f"  {layer:>4}  " + " ".join(f"{v:8.4f}" for v in row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m interpret", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("lens", "trace", "sae", "heads"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--device", default="cpu")
        p.add_argument("--json", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        if name == "heads":
            p.add_argument("--text", help=f"score each head's pattern on this prompt ({', '.join(SCORES)})")
            p.add_argument("--induction-len", type=int, default=50, help="score induction on a random sequence of "
                           "this many tokens repeated twice (0: skip)")
            p.add_argument("--batch", type=int, default=4, help="random sequences for the induction score")
            p.add_argument("--top", type=int, default=5, help="heads listed a score")
        if name in ("lens", "trace"):
            p.add_argument("--text", required=True)
            p.add_argument("--target", required=name == "trace")
        if name == "lens":
            p.add_argument("--k", type=int, default=3)
            p.add_argument("--position", type=int, default=-1)
        if name == "trace":
            p.add_argument("--subject", required=True)
            p.add_argument("--point", default="resid_post", choices=["resid_pre", "resid_post", "attn_out", "mlp_out"])
            p.add_argument("--window", type=int, default=1)
            p.add_argument("--samples", type=int, default=10)
            p.add_argument("--noise", type=float, default=3.0)
        if name == "sae":
            p.add_argument("--data", required=True, help="a text file whose tokens give the activations")
            p.add_argument("--layer", type=int, required=True)
            p.add_argument("--point", default="resid_post", choices=["resid_pre", "resid_post", "attn_out", "mlp_out"])
            p.add_argument("--d-sae", type=int, required=True)
            p.add_argument("--k", type=int, default=32, help="TopK's k; 0 for ReLU with an L1 penalty")
            p.add_argument("--steps", type=int, default=1000)
            p.add_argument("--batch-size", type=int, default=256)
            p.add_argument("--lr", type=float, default=4e-4)
            p.add_argument("--seq-len", type=int, default=128)
            p.add_argument("--max-tokens", type=int, default=200_000)
            p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if getattr(args, "k", None) == 0 and args.cmd == "sae":
        args.k = None
    try:
        doc = {"lens": _lens, "trace": _trace, "sae": _sae, "heads": _heads}[args.cmd](args)
    except (LmstackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
