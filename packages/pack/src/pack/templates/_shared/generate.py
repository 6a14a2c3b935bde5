"""Sample a continuation of a prompt from a checkpoint (any lmstack or Hugging Face Llama / GPT-2 directory).

    python generate.py runs/pretrain/checkpoints/step_00000030 --prompt "def " [--max-new-tokens 48]

The model and its tokenizer load from the directory (a LoRA checkpoint loads with its adapters merged); decoding
is serve.generate.generate with temperature 0.8 and top-k 40 under a fixed seed.
"""

from __future__ import annotations

import argparse

import torch

from serve.generate import generate
from serve.loading import load_model, load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint or model directory")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = load_model(args.model, device="cpu").eval()
    tok = load_tokenizer(args.model)
    ids = torch.tensor([tok.encode(args.prompt)])
    out = generate(model, ids, max_new_tokens=args.max_new_tokens, tokenizer=tok, temperature=args.temperature,
                   top_k=40, seed=args.seed)
    text = tok.decode(out[0].tolist(), skip_special_tokens=True)
    print("-" * 60 + f"\n{text}\n" + "-" * 60)


if __name__ == "__main__":
    main()
