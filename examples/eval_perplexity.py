"""Held-out perplexity of a training checkpoint, on exactly the validation data its run held out.

    python examples/eval_perplexity.py runs/x/checkpoints/step_00000030 [--batches 2] [--out eval.json]

The checkpoint's ``trainer_state.json`` records the run's config; its ``data`` section rebuilds the validation
split the trainer evaluated on (``data.val_fraction`` of the samples, unshuffled), so the numbers here equal the
``eval/loss`` the run logged at that step. The model comes back through ``TransformerLM.from_pretrained`` (weights
checked against the model card's sha256), the loss is the token mean of ``model.loss`` and the perplexity is
``eval.metrics.perplexity``; bits per byte (``eval.metrics.bits_per_byte``, the tokenizer-independent figure of
The Pile and lm-evaluation-harness) divides the summed loss by the UTF-8 bytes of the scored targets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data.loader import build_dataloader
from data.tokenizer import load_tokenizer
from eval.metrics import bits_per_byte, perplexity
from model.lm import TransformerLM
from specs.batch import IGNORE_INDEX
from specs.cli import run_cli
from specs.config import RunConfig
from specs.errors import ConfigError
from specs.io import atomic_write_text, config_from_dict


def evaluate(checkpoint: Path, batches: int | None = None) -> dict[str, float]:
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        raise ConfigError("checkpoint", f"{checkpoint} has no trainer_state.json; expected a train.run checkpoint "
                                        "(runs/NAME/checkpoints/step_XXXXXXXX)")
    run = config_from_dict(json.loads(state_file.read_text())["config"], RunConfig)
    d = run.data
    if d.val_fraction <= 0:
        raise ConfigError("data.val_fraction", "the run held out no validation data (val_fraction is 0)")
    model = TransformerLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(str(checkpoint))
    val = build_dataloader(d.path, d.batch_size, d.seq_len, seed=d.seed, shuffle=False, epochs=1, pack=d.pack,
                           doc_mask=d.doc_mask, tokenizer=d.tokenizer, val_fraction=d.val_fraction, split="val")
    limit = batches or run.train.eval_steps
    nll = n_tokens = n_bytes = 0.0
    with torch.no_grad():
        for i, batch in enumerate(val):
            if i >= limit:
                break
            keep = batch.labels != IGNORE_INDEX
            n = int(keep.sum())
            # The fields the trainer fed the model: padding mask for unpacked rows, document ids when masked.
            extra = {"attn_mask": batch.attention_mask} if not d.pack else {}
            if d.doc_mask:
                extra["document_ids"] = batch.document_ids
            loss = model.loss(batch.input_ids, batch.labels, positions=batch.positions, **extra)
            nll += float(loss) * n
            n_tokens += n
            n_bytes += len(tok.decode(batch.labels[keep].tolist()).encode("utf-8"))
    if n_tokens == 0:
        raise ConfigError("data", f"the validation split of {d.path} yielded no batches")
    loss = nll / n_tokens
    return {"step": json.loads(state_file.read_text())["step"], "loss": loss, "ppl": perplexity(loss),
            "bits_per_byte": bits_per_byte(nll, int(n_bytes)), "tokens": int(n_tokens)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/eval_perplexity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a train.run checkpoint directory")
    p.add_argument("--batches", type=int, default=None, help="validation batches (default: the run's train.eval_steps)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    result = evaluate(args.checkpoint, args.batches)
    print(f"held-out at step {result['step']}: loss {result['loss']:.4f} | ppl {result['ppl']:.2f} | "
          f"{result['bits_per_byte']:.3f} bits/byte over {result['tokens']} tokens")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
