"""ALiBi slopes against the paper's formula and its reference code's published values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specs.errors import ConfigError, ShapeError
from tensor.alibi import alibi_bias, alibi_slopes


def paper_slopes(n: int) -> list[float]:
    """Press et al. 2021 sec. 3: geometric sequence starting at 2^(-8/n) with that ratio; non-powers of 2 interleave."""
    def pow2(k):
        return [2 ** (-8 * (i + 1) / k) for i in range(k)]
    if (n & (n - 1)) == 0:
        return pow2(n)
    p = 2 ** int(math.floor(math.log2(n)))
    return pow2(p) + pow2(2 * p)[::2][: n - p]


@given(st.integers(1, 256))
def test_slopes_follow_the_paper(n):
    got = alibi_slopes(n)
    assert got.shape == (n,) and got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(paper_slopes(n)), rtol=1e-6, atol=0)
    assert bool((got > 0).all()) and bool((got <= 0.5 ** (8 / 2 ** math.ceil(math.log2(n))) + 1e-6).all())


def test_known_values():
    assert alibi_slopes(8).tolist() == [1 / 2 ** i for i in range(1, 9)]  # the paper's 8-head example
    # 12 heads (BLOOM-560m style): 8 power-of-2 slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expect = [2 ** -i for i in range(1, 9)] + [2 ** -(i + 0.5) for i in range(4)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(expect), rtol=1e-6)


def test_bias_values_and_shape():
    slopes = alibi_slopes(4)
    q = torch.tensor([[3, 4]])
    k = torch.tensor([[0, 1, 2, 3, 4]])
    bias = alibi_bias(slopes, q, k)
    assert bias.shape == (1, 4, 2, 5)
    for h in range(4):
        for t, p in enumerate([3, 4]):
            for s, j in enumerate(range(5)):
                assert math.isclose(bias[0, h, t, s].item(), slopes[h].item() * (j - p), rel_tol=1e-6)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="n_heads"):
        alibi_slopes(0)
    with pytest.raises(ShapeError):
        alibi_bias(alibi_slopes(2), torch.zeros(3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
