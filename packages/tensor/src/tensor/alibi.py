"""ALiBi: attention with linear biases (Press, Smith & Lewis 2021, "Train Short, Test Long", arXiv:2108.12409).

Head h (0-based) of n heads gets slope m_h = 2^(-8(h+1)/n) when n is a power of two. Otherwise the paper (and
its reference code, ofirpress/attention_with_linear_biases) takes the slopes of the closest smaller power of two
p, then every other slope of the 2p-head sequence for the remaining n - p heads. The bias added to the score of
query position i and key position j is m_h * (j - i): zero on the diagonal, increasingly negative into the past.
(Bloom's ``m_h * j`` differs by a per-row constant, which softmax ignores.)

Shape legend: B batch, H heads, T queries, S keys.
"""

from __future__ import annotations

import math

import torch

from specs.errors import ConfigError
from specs.tensor_spec import TensorSpec

_Q = TensorSpec("B", "T")
_K = TensorSpec("B", "S")


def _power_of_2_slopes(n: int) -> list[float]:
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
    return [start * start**i for i in range(n)]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(H,) float32 per-head slopes, including the paper's rule for non-power-of-2 head counts."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads <= 0:
        raise ConfigError("n_heads", f"ALiBi needs a positive int head count, got {n_heads!r}")
    if math.log2(n_heads).is_integer():
        slopes = _power_of_2_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = _power_of_2_slopes(closest) + _power_of_2_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes_H: torch.Tensor, q_pos_BT: torch.Tensor, k_pos_BS: torch.Tensor) -> torch.Tensor:
    """(B, H, T, S) float32 additive score bias ``slope_h * (k_pos - q_pos)`` (add before the softmax)."""
    env = _Q.check(q_pos_BT, "q_pos_BT")
    _K.check(k_pos_BS, "k_pos_BS", B=env["B"])
    dist_B1TS = (k_pos_BS[:, None, None, :] - q_pos_BT[:, None, :, None]).to(torch.float32)
    return slopes_H.to(device=dist_B1TS.device, dtype=torch.float32)[None, :, None, None] * dist_B1TS
