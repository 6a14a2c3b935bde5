"""Optimizers: AdamW (fused kernel where the device has one), SGD with momentum, and Lion.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2), per parameter with
gradient g, momentum m, learning rate lr and decoupled weight decay wd::

    c = beta1 * m + (1 - beta1) * g          # interpolate, then take the sign
    theta = theta - lr * (sign(c) + wd * theta)
    m = beta2 * m + (1 - beta2) * g           # the momentum itself uses beta2

The update has the same magnitude on every coordinate, so Lion wants a 3-10x smaller lr and a 3-10x larger weight
decay than AdamW (paper section 5). The paper's defaults are betas (0.9, 0.99); ``train.betas`` applies as given.

Weight decay applies to matrices and embeddings only (``p.dim() >= 2``), not to biases and norm gains (the GPT-2 /
nanoGPT convention); :func:`param_groups` makes the two groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import dist
from specs.config import DistConfig, TrainConfig


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay; see the module docstring for the update."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, foreach: bool | None = None):
        if lr < 0:
            raise ValueError(f"Lion: lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay, "foreach": foreach})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, moms = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                moms.append(state["exp_avg"])
            if not params:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            if group["foreach"] is False:
                for p, g, m in zip(params, grads, moms):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(torch.sign(m * beta1 + g * (1 - beta1)), alpha=-lr)
                    m.lerp_(g, 1 - beta2)
                continue
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            c = torch._foreach_mul(moms, beta1)
            torch._foreach_add_(c, grads, alpha=1 - beta1)
            torch._foreach_sign_(c)
            torch._foreach_add_(params, c, alpha=-lr)
            torch._foreach_lerp_(moms, grads, 1 - beta2)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ``p.dim() >= 2`` with ``weight_decay``, the rest (biases, norm gains) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fused_ok(device: torch.device) -> bool:
    # torch ships fused AdamW kernels for CUDA, CPU, MPS and XPU; CUDA is where the gain is largest.
    return device.type in ("cuda", "cpu", "mps", "xpu")


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                    dist_cfg: DistConfig | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``model``'s parameters (ZeRO-1 sharded when asked)."""
    groups = param_groups(model, cfg.weight_decay)
    dist_cfg = dist_cfg or DistConfig()
    if cfg.optimizer == "adamw":
        return dist.build_optimizer(dist_cfg, torch.optim.AdamW, groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                    fused=_fused_ok(device) or None)
    if cfg.optimizer == "sgd":
        return dist.build_optimizer(dist_cfg, torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum)
    return dist.build_optimizer(dist_cfg, Lion, groups, lr=cfg.lr, betas=cfg.betas)
