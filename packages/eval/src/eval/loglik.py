"""Log-likelihood scoring of token sequences with any causal LM (lm-evaluation-harness semantics).

``loglikelihood(model, [(context_ids, continuation_ids), ...])`` returns, per pair, the summed log-probability of
the continuation given the context and whether greedy decoding would have produced it, exactly as lm-eval's
``HFLM._loglikelihood_tokens``: the pair is truncated from the left to ``max_length + 1`` tokens, the model reads all
but the last token, and the continuation's scores are read from the last ``len(continuation)`` positions.

``loglikelihood_rolling`` scores a whole text in windows of at most ``max_length`` tokens: lm-eval's
``get_rolling_token_windows`` + ``make_disjoint_window`` split the tokens into disjoint predicted spans, each read
with the tokens before it as context (``context_len`` of overlap; the first token is predicted from
``prefix_token``, usually EOS/BOS), so every token is scored exactly once.

Batches are padded on the right and sorted longest first; causal attention means padding never reaches the scored
positions, so scores do not depend on the batch size. Legend: B rows, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from specs.errors import ConfigError

Pair = tuple[Sequence[int], Sequence[int]]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int,
                    context_len: int = 1) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows covering ``tokens`` (lm-eval's rolling windows, made disjoint).

    Each window's context + continuation has at most ``max_length + 1`` tokens, so the model reads at most
    ``max_length``. The continuations concatenate to ``tokens``.
    """
    if not 1 <= context_len <= max_length:
        raise ConfigError("context_len", f"must be in [1, max_length={max_length}], got {context_len}")
    tokens = list(tokens)
    if not tokens:
        return
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    windows = [([prefix_token, *tokens[: first - 1]], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        windows.append((tokens[max(end - max_length - 1, 0): end - 1], tokens[end - n: end]))
        predicted += n
    for ctx, cont in windows:
        # make_disjoint_window: keep only the context before the continuation's first target.
        yield ctx[: len(ctx) - (len(cont) - 1)], cont


def loglikelihood(model: Any, pairs: Sequence[Pair], *, max_length: int | None = None, batch_size: int = 8,
                  device: torch.device | str | None = None) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs in nats, continuation is the greedy one) for each (context, continuation).

    ``context`` and ``continuation`` are non-empty lists of token ids (pass a BOS/EOS token as context for
    unconditional scoring; encode text with the tokenizer first). ``max_length`` (>= 1) defaults to
    ``model.config.max_seq_len``.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    max_length = _max_length(model, max_length)
    device = torch.device(device) if device is not None else _model_device(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    prepared: list[tuple[list[int], list[int]]] = []
    for i, (ctx, cont) in enumerate(pairs):
        for part, ids in (("context", ctx), ("continuation", cont)):
            if isinstance(ids, (str, bytes)):
                raise ConfigError(f"pairs[{i}]", f"{part} is a {type(ids).__name__} ({ids[:20]!r}); expected a "
                                                 "list of token ids (encode text with the tokenizer first)")
        if not cont:
            raise ConfigError(f"pairs[{i}]", "continuation is empty; nothing to score")
        if not ctx:
            raise ConfigError(f"pairs[{i}]", "context is empty; pass a BOS/EOS token as context")
        if len(cont) > max_length:
            raise ConfigError(f"pairs[{i}]", f"continuation has {len(cont)} tokens, more than max_length={max_length}")
        if isinstance(vocab, int) and (bad := [t for t in (*ctx, *cont) if not 0 <= t < vocab]):
            raise ConfigError(f"pairs[{i}]", f"token id {bad[0]} is outside the vocabulary [0, {vocab}) (the model's "
                                             "vocab_size); expected ids of the model's tokenizer")
        whole = [*ctx, *cont][-(max_length + 1):]
        prepared.append((whole[:-1], list(cont)))
    # Longest first, so the padded width of a batch is set by its first row (lm-eval's Collator order).
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(prepared[i][0]) for i in chunk)
                ids_BT = torch.zeros(len(chunk), width, dtype=torch.long)
                for b, i in enumerate(chunk):
                    inp = prepared[i][0]
                    ids_BT[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
                logits_BTV = model(ids_BT.to(device))
                for b, i in enumerate(chunk):
                    inp, cont = prepared[i]
                    logp = logits_BTV[b, len(inp) - len(cont): len(inp)].float().log_softmax(-1)  # (n, V)
                    target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                    score = float(logp.gather(-1, target[:, None]).sum())
                    greedy = bool((logp.argmax(-1) == target).all())
                    results[i] = (score, greedy)
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def loglikelihood_rolling(model: Any, tokens: Sequence[int], *, prefix_token: int, max_length: int | None = None,
                          context_len: int = 1, batch_size: int = 8,
                          device: torch.device | str | None = None) -> float:
    """Total log-probability (nats) of ``tokens``, scored in disjoint windows of at most ``max_length`` tokens
    (>= 1; default ``model.config.max_seq_len``)."""
    if isinstance(tokens, (str, bytes)):
        raise ConfigError("tokens", f"is a {type(tokens).__name__}; expected a list of token ids (encode text with "
                                    "the tokenizer first)")
    max_length = _max_length(model, max_length)
    windows = list(rolling_windows(tokens, prefix_token, max_length, context_len))
    if not windows:
        return 0.0
    return sum(s for s, _ in loglikelihood(model, windows, max_length=max_length, batch_size=batch_size,
                                           device=device))


def _max_length(model: Any, max_length: int | None) -> int:
    if max_length is None:
        return int(model.config.max_seq_len)
    if max_length < 1:
        raise ConfigError("max_length", f"must be >= 1 (tokens the model reads per row; None = the model's "
                                        f"max_seq_len), got {max_length}")
    return max_length


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
