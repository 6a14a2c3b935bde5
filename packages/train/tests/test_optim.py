"""Optimizers: Lion against a hand-computed update, the foreach and loop paths, weight-decay groups."""

from __future__ import annotations

import pytest
import torch
from train_testing import TinyLM

from specs.config import TrainConfig
from train.optim import Lion, build_optimizer, param_groups


def test_lion_matches_hand_computed_updates():
    # theta = [1.0, -2.0, 0.5], lr = 0.1, betas = (0.9, 0.99), wd = 0.5
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    # step 1: g = [0.3, -0.2, 0.0]; m0 = 0 -> c = 0.1 g = [0.03, -0.02, 0] -> sign = [1, -1, 0]
    # theta = theta * (1 - 0.1 * 0.5) - 0.1 * sign = [0.95 - 0.1, -1.9 + 0.1, 0.475 - 0] = [0.85, -1.8, 0.475]
    # m1 = 0.99 * 0 + 0.01 g = [0.003, -0.002, 0]
    p.grad = torch.tensor([0.3, -0.2, 0.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -1.8, 0.475]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.002, 0.0]))
    # step 2: g = [-0.01, -0.5, 0.2]; c = 0.9 m1 + 0.1 g = [0.0027 - 0.001, -0.0018 - 0.05, 0.02]
    #       = [0.0017, -0.0518, 0.02] -> sign = [1, -1, 1] (the momentum outvotes the first gradient)
    # theta = [0.85 * 0.95 - 0.1, -1.8 * 0.95 + 0.1, 0.475 * 0.95 - 0.1] = [0.7075, -1.61, 0.35125]
    # m2 = 0.99 m1 + 0.01 g = [0.00297 - 0.0001, -0.00198 - 0.005, 0.002] = [0.00287, -0.00698, 0.002]
    p.grad = torch.tensor([-0.01, -0.5, 0.2])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.7075, -1.61, 0.35125]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.00287, -0.00698, 0.002]))


def test_lion_foreach_and_loop_agree():
    torch.manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    oa = Lion(a, lr=0.01, weight_decay=0.1, foreach=True)
    ob = Lion(b, lr=0.01, weight_decay=0.1, foreach=False)
    for _ in range(5):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g, g.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_lion_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="betas"):
        Lion([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))


def test_param_groups_decay_matrices_only():
    model = TinyLM()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lion", Lion)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(TinyLM(), TrainConfig(optimizer=name, lr=0.5, momentum=0.8), torch.device("cpu"))
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.5
    if name == "adamw":
        assert opt.defaults["fused"] is True  # torch has a fused CPU AdamW kernel
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.8
