"""Test helpers: a tiny causal LM stand-in, a resumable in-memory token loader and a recording callback.

The stand-in keeps the trainer's unit tests independent of packages/model (the integration tests in
test_run.py and test_dist.py use the real TransformerLM through the plugin resolver).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specs.batch import IGNORE_INDEX, Batch
from specs.config import ModelConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(self.ln1(x_BTD)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x_BTD = x_BTD + F.dropout(self.proj(att), self.dropout, self.training)
        return x_BTD + self.out(F.gelu(self.fc(self.ln2(x_BTD))))


class TinyLM(nn.Module):
    """A GPT-style causal LM with a ``config`` (ModelConfig), ``forward`` -> logits and ``loss``."""

    def __init__(self, vocab: int = 64, d: int = 32, n_layers: int = 2, n_heads: int = 2, dropout: float = 0.0,
                 with_loss: bool = True):
        super().__init__()
        self.config = ModelConfig(d_model=d, n_heads=n_heads, n_layers=n_layers, d_ff=4 * d, vocab_size=vocab,
                                  max_seq_len=128, dropout=dropout)
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(128, d)
        self.layers = nn.ModuleList(Block(d, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if not with_loss:
            self.loss = None  # type: ignore[assignment]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = positions if positions is not None else torch.arange(T, device=input_ids.device)[None]
        x = self.emb(input_ids) + self.pos(pos)
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, V)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw: Any) -> torch.Tensor:
        logits = self(input_ids, **kw)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


class TokenLoader:
    """Endless deterministic batches of random token windows; ``state_dict`` is the batch counter."""

    def __init__(self, batch_size: int = 8, seq_len: int = 16, vocab: int = 64, seed: int = 0, n_tokens: int = 4096):
        g = torch.Generator().manual_seed(1234)
        # a learnable stream: mostly +1 steps with some noise
        noise = torch.randint(0, vocab, (n_tokens,), generator=g)
        steps = torch.where(torch.rand(n_tokens, generator=g) < 0.8, 1, noise)
        self.tokens = torch.cumsum(steps, 0) % vocab
        self.batch_size, self.seq_len, self.seed, self.index = batch_size, seq_len, seed, 0

    def batch(self, i: int) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=g)
        rows = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])
        T = self.seq_len
        return Batch(input_ids=rows[:, :-1].contiguous(), labels=rows[:, 1:].contiguous(),
                     positions=torch.arange(T).expand(self.batch_size, T).contiguous())

    def __iter__(self):
        while True:
            self.index += 1
            yield self.batch(self.index - 1)

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


class Recorder:
    """A callback that keeps everything it is told."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[str] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.ended = 0

    def on_step(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, dict(metrics)))

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        self.checkpoints.append(path)

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, dict(metrics)))

    def on_end(self, trainer: Any) -> None:
        self.ended += 1

    def losses(self) -> dict[int, float]:
        return {s: m["loss"] for s, m in self.steps if "loss" in m}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    return env
