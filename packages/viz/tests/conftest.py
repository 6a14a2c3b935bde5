"""Shared fixtures: a tiny two-layer model with named MLPs, and a config factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specs.config import VizConfig


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU())
        self.out = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.out(self.mlp(x))


class TinyNet(nn.Module):
    def __init__(self, d: int = 8, n_layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([Block(d) for _ in range(n_layers)])

    def forward(self, x):  # (B, D) -> (B, D)
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def viz_cfg():
    def make(**kw) -> VizConfig:
        return VizConfig(**kw)
    return make


def forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())
