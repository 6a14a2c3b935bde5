"""Schedule values at known steps, against the formulas written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from specs.config import TrainConfig
from specs.errors import ConfigError
from train.schedule import build_scheduler, lr_multiplier


def m(step, schedule, total=100, warmup=10, min_ratio=0.1, decay_fraction=0.2):
    return lr_multiplier(step, total=total, schedule=schedule, warmup=warmup, min_ratio=min_ratio,
                         decay_fraction=decay_fraction)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_warmup_is_linear_and_reaches_peak(schedule):
    assert [m(s, schedule) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert m(9, schedule) == 1.0


def test_cosine_values():
    # p = (s - 10 + 1) / 90; 0.1 + 0.9 * (1 + cos(pi p)) / 2
    assert m(10, "cosine") == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 90)))
    assert m(54, "cosine") == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 45 / 90)))  # halfway: 0.55
    assert m(54, "cosine") == pytest.approx(0.55)
    assert m(99, "cosine") == pytest.approx(0.1)  # the floor on the last step
    assert m(150, "cosine") == pytest.approx(0.1)  # and past the end


def test_linear_values():
    assert m(10, "linear") == pytest.approx(1 - 0.9 / 90)
    assert m(54, "linear") == pytest.approx(0.55)
    assert m(99, "linear") == pytest.approx(0.1)


def test_wsd_values():
    # 20 decay steps: stable through step 79, then linear from 1 to 0.1 over steps 80..99
    assert m(50, "wsd") == 1.0 and m(79, "wsd") == 1.0
    assert m(80, "wsd") == pytest.approx(1 - 0.9 / 20)
    assert m(89, "wsd") == pytest.approx(0.55)
    assert m(99, "wsd") == pytest.approx(0.1)
    assert m(50, "wsd", decay_fraction=0.0) == 1.0 and m(99, "wsd", decay_fraction=0.0) == 1.0


def test_constant_and_edge_cases():
    assert m(10, "constant") == 1.0 and m(99, "constant") == 1.0
    assert lr_multiplier(0, total=5, schedule="cosine", warmup=100) == pytest.approx(1 / 5)  # warmup clamped to steps
    assert lr_multiplier(0, total=1, schedule="linear", warmup=0, min_ratio=0.3) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="train.schedule"):
        m(0, "exponential")


def test_scheduler_drives_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    cfg = TrainConfig(steps=20, lr=2.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.0)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * lr_multiplier(s, total=20, schedule="cosine", warmup=4, min_ratio=0.0) for s in range(20)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.5) and seen[-1] == pytest.approx(0.0, abs=1e-12)
    state = sched.state_dict()
    assert state["last_epoch"] == 20
