"""Test helpers: a tiny model with a block list and its data, shared with the torchrun worker."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    """Embedding -> blocks -> head; ``loss`` is next-token cross-entropy."""

    def __init__(self, vocab: int = 32, d: int = 16, n_layers: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n_layers))
        self.extras = nn.ModuleList([nn.Linear(d, d), nn.ReLU()])  # mixed classes: not a block list
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits(ids)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for block in self.layers:
            x = block(x)
        return self.head(x + self.extras[1](self.extras[0](x)))

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """``loss_fn``'s value without calling ``forward``, as ``TransformerLM.loss`` does: under FSDP only hooks
        registered for this method gather the root's weights."""
        return F.cross_entropy(self.logits(rows[:, :-1]).flatten(0, 1).float(), rows[:, 1:].flatten())


def batches(n: int, rows: int = 8, seq: int = 12, vocab: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return [torch.randint(0, vocab, (rows, seq + 1), generator=g) for _ in range(n)]


def loss_fn(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten())


def groups(model: nn.Module) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    return env
