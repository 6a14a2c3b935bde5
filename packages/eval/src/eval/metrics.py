"""Language-modelling metrics: perplexity, token accuracy, bits per byte, and log-likelihood scoring.

``perplexity(loss)`` is ``exp(mean cross-entropy in nats)``; ``bits_per_byte`` converts a summed negative
log-likelihood to bits and divides by the UTF-8 byte count of the text (the tokenizer-independent measure of
Gao et al. 2020, The Pile, and lm-evaluation-harness's ``bits_per_byte``). Log-likelihood of (context,
continuation) pairs and rolling log-likelihood live in :mod:`eval.loglik` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from eval.loglik import loglikelihood, loglikelihood_rolling, rolling_windows
from specs.batch import IGNORE_INDEX
from specs.errors import ConfigError

__all__ = ["perplexity", "token_accuracy", "bits_per_byte", "loglikelihood", "loglikelihood_rolling",
           "rolling_windows"]


def perplexity(loss: float | torch.Tensor) -> float | torch.Tensor:
    """exp(loss) for a mean cross-entropy in nats (>= 0). A Python number or 0-d tensor gives a float (inf on
    overflow; a NaN or negative loss is a ConfigError); a tensor with several elements gives a tensor of
    perplexities (a negative entry is a ConfigError, a NaN entry gives NaN there, e.g. a row with nothing scored)."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            loss = loss.detach().float()
            if bool((loss < 0).any()):
                raise ConfigError("loss", f"has negative entries (min {float(loss.nan_to_num(0.0).min()):.4g}); "
                                          "expected mean cross-entropies in nats, which are >= 0")
            return loss.exp()
        loss = float(loss.detach())
    loss = check_loss(loss, "loss", "perplexity")
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def check_loss(value: float, path: str, what: str) -> float:
    """``value`` as a float; ConfigError unless it is a cross-entropy / negative log-likelihood (>= 0, not NaN)."""
    value = float(value)
    if math.isnan(value):
        raise ConfigError(path, f"is NaN; {what} is undefined")
    if value < 0:
        raise ConfigError(path, f"must be >= 0 (a negative log-likelihood in nats), got {value}")
    return value


def token_accuracy(logits_BTV: torch.Tensor, labels_BT: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of labelled positions whose argmax prediction equals the label (labels already shifted, as in Batch)."""
    if logits_BTV.shape[:-1] != labels_BT.shape:
        raise ConfigError("labels", f"shape {tuple(labels_BT.shape)} does not match logits {tuple(logits_BTV.shape)}"
                                    " without the vocab dim")
    keep = labels_BT != ignore_index
    n = int(keep.sum())
    if n == 0:
        raise ConfigError("labels", f"every label is {ignore_index}; nothing to score")
    return float(((logits_BTV.argmax(-1) == labels_BT) & keep).sum()) / n


def bits_per_byte(nll: float, n_bytes: int) -> float:
    """Summed negative log-likelihood in nats (>= 0; NaN or negative is a ConfigError) over a text of ``n_bytes``
    UTF-8 bytes -> bits per byte."""
    if n_bytes <= 0:
        raise ConfigError("n_bytes", f"must be positive, got {n_bytes}")
    return check_loss(nll, "nll", "bits per byte") / (n_bytes * math.log(2))


def bits_per_byte_from_loss(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Mean token loss (nats, >= 0) over ``n_tokens`` (>= 1) tokens that encode ``n_bytes`` bytes -> bits per
    byte."""
    if n_tokens < 1:
        raise ConfigError("n_tokens", f"must be >= 1 (the tokens the loss is averaged over), got {n_tokens}")
    return bits_per_byte(check_loss(loss, "loss", "bits per byte") * n_tokens, n_bytes)


def text_bits_per_byte(model: Any, tokenizer: Any, text: str, *, max_length: int | None = None,
                       batch_size: int = 8) -> float:
    """Bits per byte of ``text`` under ``model``: rolling log-likelihood with the tokenizer's BOS (else EOS) as the
    first token's context, as lm-eval's HFLM does."""
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is None:
        raise ConfigError("tokenizer", "needs an EOS or BOS token to condition the first token on")
    ll = loglikelihood_rolling(model, tokenizer.encode(text), prefix_token=prefix, max_length=max_length,
                               batch_size=batch_size)
    return bits_per_byte(-ll, len(text.encode("utf-8")))
