"""Residual wiring: pre-norm, post-norm and DeepNorm scaling."""

from __future__ import annotations

import math

import pytest
import torch

from specs.errors import ConfigError
from tensor.residual import deepnorm_alpha, deepnorm_beta, post_norm_residual, pre_norm_residual, residual, residual_add


def test_pre_and_post_norm():
    x = torch.randn(2, 3, 8)
    norm = torch.nn.LayerNorm(8)
    fn = torch.nn.Linear(8, 8)
    assert torch.equal(pre_norm_residual(x, norm, fn), x + fn(norm(x)))
    assert torch.equal(post_norm_residual(x, norm, fn), norm(x + fn(x)))
    assert torch.equal(residual(x, norm, fn, "pre"), pre_norm_residual(x, norm, fn))
    assert torch.allclose(post_norm_residual(x, norm, fn, alpha=2.0), norm(2 * x + fn(x)))
    with pytest.raises(ConfigError, match="norm_position"):
        residual(x, norm, fn, "middle")  # type: ignore[arg-type]


def test_residual_add_and_deepnorm():
    x, y = torch.randn(4), torch.randn(4)
    assert torch.equal(residual_add(x, y), x + y)
    assert torch.allclose(residual_add(x, y, alpha=3.0), 3 * x + y)
    assert math.isclose(deepnorm_alpha(12), 24 ** 0.25) and math.isclose(deepnorm_beta(12), 96 ** -0.25)
    with pytest.raises(ConfigError):
        deepnorm_alpha(0)
