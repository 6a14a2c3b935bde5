"""Preference losses on sequence log-probabilities, as TRL computes them (trl 1.13's ``DPOTrainer._compute_loss``
and ``ORPOTrainer.odds_ratio_loss``; the tests compare against both).

A sequence's log-probability is the sum over its completion tokens of ``log p(token | everything before it)``
(:func:`sequence_logps`); the prompt and the padding are not scored. Every function returns per-pair values;
the objective averages them over the pairs of a batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from specs.batch import IGNORE_INDEX
from specs.errors import ConfigError

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm")


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) fp32: each target token's log-probability, 0 where ``labels`` is IGNORE_INDEX.

    ``logits`` (B, T, V); ``labels`` (B, T) holds each position's next token or IGNORE_INDEX (the data loaders'
    shifted labels), so no shift happens here."""
    B, T = labels.shape
    return -F.cross_entropy(logits.float().reshape(B * T, -1), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="none").view(B, T)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the target tokens' log-probabilities, number of target tokens) per row, both (B,), fp32
    (:func:`token_logps` summed)."""
    return token_logps(logits, labels).sum(-1), (labels != IGNORE_INDEX).sum(-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate near 0 and for large |x| (Maechler's two branches)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair DPO losses (Rafailov et al. 2023) and the variants TRL names by ``loss_type``:

    - ``sigmoid``: ``-log sigmoid(beta * d)``, ``d`` the chosen log-ratio (policy over reference) minus the
      rejected one;
    - ``hinge`` (SLiC): ``relu(1 - beta * d)``;
    - ``ipo`` (Azar et al. 2023): ``(d' - 1 / (2 beta))^2``, ``d'`` from log-ratios averaged per completion token
      (TRL's normalisation; needs the token counts);
    - ``robust`` (cDPO with the bias correction of Chowdhury et al. 2024): the sigmoid loss with the labels flipped
      at rate ``label_smoothing``, divided by ``1 - 2 label_smoothing``;
    - ``sigmoid_norm``: the sigmoid loss on per-token averaged log-ratios.
    """
    chosen = chosen_logps - ref_chosen_logps
    rejected = rejected_logps - ref_rejected_logps
    if loss_type in ("ipo", "sigmoid_norm"):
        if chosen_tokens is None or rejected_tokens is None:
            raise ConfigError("train.preference.loss_type", f"{loss_type!r} averages over completion tokens: pass "
                                                            "chosen_tokens and rejected_tokens")
        chosen = chosen / chosen_tokens.clamp(min=1)
        rejected = rejected / rejected_tokens.clamp(min=1)
    d = chosen - rejected
    if loss_type in ("sigmoid", "sigmoid_norm"):
        return -F.logsigmoid(beta * d)
    if loss_type == "hinge":
        return torch.relu(1 - beta * d)
    if loss_type == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        eps = label_smoothing
        return (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
    raise ConfigError("train.preference.loss_type", f"expected one of {', '.join(DPO_LOSSES)}, got {loss_type!r}")


def orpo_odds_ratio(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO's (Hong et al. 2024) per-pair ``log sigmoid(log odds ratio)`` and the log odds ratio, from the
    completions' per-token mean log-probabilities (so each is < 0): ``log odds(p) = log p - log(1 - p)``."""
    c, r = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    return F.logsigmoid(log_odds), log_odds


def cpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Per-pair reference-free losses of CPO (Xu et al. 2024) and SimPO (Meng et al. 2024, ``gamma`` its target
    margin) on the completions' log-probabilities (summed for CPO's sigmoid and hinge; token means for ``ipo`` and
    for SimPO, which the caller passes): ``d = chosen - rejected - gamma / beta``, then ``sigmoid`` (labels flipped
    at ``label_smoothing``), ``hinge`` or ``ipo`` as TRL's ``CPOTrainer.cpo_loss``."""
    d = chosen - rejected - gamma / beta
    if loss_type == "sigmoid":
        eps = label_smoothing
        return -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
    if loss_type == "hinge":
        return torch.relu(1 - beta * d)
    if loss_type == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    raise ConfigError("train.preference.loss_type", f"expected sigmoid, hinge or ipo, got {loss_type!r}")
