"""Assemble a small language model by hand from lmstack blocks, train it a few steps, then decode with a KV cache.

This is the blocks-only reference the seed points to: embeddings, a stack of ``LlamaBlock`` (or ``GPTBlock``),
a final norm and a tied LM head, wired with one ``AttentionContext`` per forward. ``model.lm.TransformerLM`` is the
packaged version of the same thing.

    python packages/blocks/examples/example_lm.py --block gpt --steps 30
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from attn.cache import StaticKVCache
from attn.context import build_context
from attn.positions import RotaryEmbedding
from blocks import GPTBlock, LlamaBlock, make_norm
from specs.config import ModelConfig
from tensor.init import init_weights


class TinyLM(nn.Module):
    """Token embedding -> N blocks -> norm -> tied head. RoPE positions (learned ones would need an extra table)."""

    def __init__(self, cfg: ModelConfig, block: type[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = RotaryEmbedding(cfg)
        self.layers = nn.ModuleList(block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        init_weights(self, cfg)  # GPT-2 style normal(0.02), scaled residual projections

    def forward(self, ids_BT: torch.Tensor, cache: StaticKVCache | None = None) -> torch.Tensor:
        ctx = build_context(self.cfg, ids_BT, cache=cache, rotary=self.rotary)
        h_BTD = self.embed_tokens(ids_BT)
        for layer in self.layers:
            h_BTD = layer(h_BTD, ctx)
        if cache is not None:
            cache.advance(ids_BT.shape[1])
        return self.norm(h_BTD) @ self.embed_tokens.weight.T  # (B, T, V), tied head


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", choices=["llama", "gpt"], default="llama", help="LlamaBlock or GPTBlock")
    parser.add_argument("--steps", type=int, default=40, help="training steps on a repeating toy sequence")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, vocab_size=32, max_seq_len=64,
                      bias=args.block == "gpt")
    model = TinyLM(cfg, LlamaBlock if args.block == "llama" else GPTBlock)
    data = torch.arange(48).remainder(8)[None].repeat(4, 1)  # 0 1 2 ... 7 0 1 2 ...: learnable in a few steps
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(args.steps):
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.eval()
    cache = StaticKVCache(n_layers=cfg.n_layers, batch_size=1, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                          max_seq_len=cfg.max_seq_len)
    with torch.no_grad():
        out = [0, 1, 2]
        logits = model(torch.tensor([out]), cache=cache)
        for _ in range(10):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), cache=cache)
    print("greedy decode from [0, 1, 2]:", out)
    return {"first_loss": losses[0], "last_loss": losses[-1]}


if __name__ == "__main__":
    main()
