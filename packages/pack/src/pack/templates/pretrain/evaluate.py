"""Held-out perplexity of a training checkpoint, on the validation data its run held out.

    python evaluate.py runs/pretrain/checkpoints/step_00000030 [--batches 2]

The checkpoint's trainer_state.json records the run's config; its data section rebuilds the split the trainer
evaluated on (data.val_fraction of the samples, unshuffled), so the loss here is the run's own eval/loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data.loader import build_dataloader
from eval.metrics import perplexity
from model.lm import TransformerLM
from specs.batch import IGNORE_INDEX
from specs.config import RunConfig
from specs.io import config_from_dict


def held_out_loss(checkpoint: Path, batches: int | None = None) -> tuple[float, int]:
    """(mean token loss, tokens scored) over the run's validation split."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    run = config_from_dict(state["config"], RunConfig)
    d = run.data
    if d.val_fraction <= 0:
        raise SystemExit("the run held out no validation data: set data.val_fraction in config.yaml")
    model = TransformerLM.from_pretrained(checkpoint).eval()
    val = build_dataloader(d.path, d.batch_size, d.seq_len, seed=d.seed, shuffle=False, epochs=1, pack=d.pack,
                           doc_mask=d.doc_mask, tokenizer=d.tokenizer, val_fraction=d.val_fraction, split="val")
    nll, n_tokens = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(val):
            if i >= (batches or run.train.eval_steps):
                break
            n = int((batch.labels != IGNORE_INDEX).sum())
            extra = {} if d.pack else {"attn_mask": batch.attention_mask}
            nll += float(model.loss(batch.input_ids, batch.labels, positions=batch.positions, **extra)) * n
            n_tokens += n
    if n_tokens == 0:
        raise SystemExit(f"the validation split of {d.path} yielded no batches")
    return nll / n_tokens, n_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a train.run checkpoint directory")
    p.add_argument("--batches", type=int, default=None, help="validation batches (default: train.eval_steps)")
    args = p.parse_args()
    loss, n = held_out_loss(args.checkpoint, args.batches)
    print(f"    held-out loss {loss:.4f} | perplexity {perplexity(loss):.2f} over {n} tokens")


if __name__ == "__main__":
    main()
