"""A stand-in third-party kernel package, loaded through real importlib.metadata EntryPoint objects."""

from __future__ import annotations

import torch

from kernel import Implementation

LOADS = []


def double_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return 2 * torch.nn.functional.silu(gate) * up


def implementations() -> list[Implementation]:
    LOADS.append(1)
    return [Implementation(op="swiglu", name="plugin", target=double_swiglu, priority=50, devices=("cpu",))]


single = Implementation(op="rmsnorm", name="plugin", target="fake_plugin:double_swiglu", devices=("cuda",))
not_an_impl = 42
