"""eval.metrics: perplexity, token accuracy, bits per byte; log-likelihood scoring against brute force and lm-eval."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from eval.metrics import (
    bits_per_byte,
    bits_per_byte_from_loss,
    loglikelihood,
    loglikelihood_rolling,
    perplexity,
    rolling_windows,
    text_bits_per_byte,
    token_accuracy,
)
from specs.errors import ConfigError


def test_perplexity_on_floats_and_tensors():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(torch.tensor(math.log(3.0))) == pytest.approx(3.0)
    assert isinstance(perplexity(torch.tensor(1.0)), float)
    assert torch.allclose(perplexity(torch.tensor([0.0, math.log(2.0)])), torch.tensor([1.0, 2.0]))
    assert perplexity(1e6) == math.inf
    with pytest.raises(ConfigError, match="NaN"):
        perplexity(float("nan"))
    assert math.isnan(perplexity(torch.tensor([float("nan"), 0.0]))[0])  # per-row: NaN stays where nothing scored


@pytest.mark.parametrize("call, message", [
    (lambda: perplexity(-1.0), r"loss: must be >= 0 \(a negative log-likelihood in nats\), got -1.0"),
    (lambda: perplexity(float("-inf")), "loss: must be >= 0 .*got -inf"),
    (lambda: perplexity(torch.tensor(-0.5)), "loss: must be >= 0 .*got -0.5"),
    (lambda: perplexity(torch.tensor([0.5, -2.0])), r"loss: has negative entries \(min -2\)"),
    (lambda: bits_per_byte(-10.0, 5), "nll: must be >= 0 .*got -10.0"),
    (lambda: bits_per_byte(float("nan"), 5), "nll: is NaN"),
    (lambda: bits_per_byte_from_loss(-1.0, 3, 5), "loss: must be >= 0 .*got -1.0"),
    (lambda: bits_per_byte_from_loss(1.0, 0, 5), "n_tokens: must be >= 1 .*got 0"),
])
def test_negative_losses_are_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_token_accuracy_ignores_masked_labels():
    logits = torch.zeros(1, 4, 5)
    logits[0, torch.arange(4), torch.tensor([1, 2, 3, 4])] = 1.0
    labels = torch.tensor([[1, 0, 3, -100]])
    assert token_accuracy(logits, labels) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="nothing to score"):
        token_accuracy(logits, torch.full((1, 4), -100))
    with pytest.raises(ConfigError, match="does not match"):
        token_accuracy(logits, labels[:, :2])


def test_bits_per_byte():
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    assert bits_per_byte_from_loss(math.log(2), n_tokens=4, n_bytes=2) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="n_bytes"):
        bits_per_byte(1.0, 0)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 40), st.integers(1, 9), st.data())
def test_rolling_windows_match_lm_eval_and_cover_every_token_once(n, max_length, data):
    context_len = data.draw(st.integers(1, max_length))
    tokens = list(range(100, 100 + n))
    ours = list(rolling_windows(tokens, -1, max_length, context_len))
    ref = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, -1, max_length, context_len)]
    assert ours == [(list(a), list(b)) for a, b in ref]
    assert [t for _, cont in ours for t in cont] == tokens
    for ctx, cont in ours:
        assert len(ctx) + len(cont) <= max_length + 1
        whole = ctx + cont
        # each predicted token sees exactly the tokens before it in the original text (or the prefix token)
        first = tokens.index(cont[0])
        assert whole[: len(ctx)] == ([-1] + tokens)[first + 1 - len(ctx): first + 1]


def _brute(model, ctx, cont):
    """Sum of log p(cont[i] | ctx + cont[:i]) with one full forward per token."""
    total, greedy = 0.0, True
    with torch.no_grad():
        for i, tok in enumerate(cont):
            logits = model(torch.tensor([ctx + cont[:i]]))[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            total += float(logp[tok])
            greedy &= int(logits.argmax()) == tok
    return total, greedy


def test_loglikelihood_equals_brute_force_and_ignores_batch_size(tiny_lm):
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 300, (a,), generator=g).tolist(), torch.randint(0, 300, (b,), generator=g).tolist())
             for a, b in ((3, 2), (10, 5), (1, 1), (7, 9), (20, 3))]
    brute = [_brute(tiny_lm, c, x) for c, x in pairs]
    for bs in (1, 2, 5):
        got = loglikelihood(tiny_lm, pairs, batch_size=bs)
        for (s, gr), (bs_, bg) in zip(got, brute):
            assert s == pytest.approx(bs_, abs=1e-4) and gr == bg
    # a greedy continuation is recognised as such
    ctx = [5, 6, 7]
    with torch.no_grad():
        nxt = int(tiny_lm(torch.tensor([ctx]))[0, -1].argmax())
    assert loglikelihood(tiny_lm, [(ctx, [nxt])])[0][1] is True


def test_rolling_loglikelihood_equals_brute_force_windows(tiny_lm):
    tokens = torch.randint(0, 300, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    got = loglikelihood_rolling(tiny_lm, tokens, prefix_token=1, max_length=8, batch_size=3)
    # brute force: token t is scored given at most the 8 - ... tokens its window gives it
    want = sum(_brute(tiny_lm, ctx, cont)[0] for ctx, cont in rolling_windows(tokens, 1, 8))
    assert got == pytest.approx(want, abs=1e-4)
    # with a window longer than the text it is the plain sequence log-likelihood after the prefix token
    full = loglikelihood_rolling(tiny_lm, tokens, prefix_token=1, max_length=64)
    assert full == pytest.approx(_brute(tiny_lm, [1], tokens)[0], abs=1e-4)
    assert full != pytest.approx(got, abs=1e-3)  # shorter windows see less context


def test_loglikelihood_rejects_bad_pairs(tiny_lm):
    with pytest.raises(ConfigError, match="context is empty"):
        loglikelihood(tiny_lm, [([], [1])])
    with pytest.raises(ConfigError, match="continuation is empty"):
        loglikelihood(tiny_lm, [([1], [])])
    with pytest.raises(ConfigError, match="more than max_length"):
        loglikelihood(tiny_lm, [([1], [2] * 10)], max_length=4)
    with pytest.raises(ConfigError, match=r"pairs\[0\]: context is a str \('The'\); expected a list of token ids"):
        loglikelihood(tiny_lm, [("The", " cat")])
    with pytest.raises(ConfigError, match="tokens: is a str; expected a list of token ids"):
        loglikelihood_rolling(tiny_lm, "The cat", prefix_token=1)
    vocab = tiny_lm.config.vocab_size
    with pytest.raises(ConfigError, match=rf"pairs\[1\]: token id {vocab} is outside the vocabulary \[0, {vocab}\)"):
        loglikelihood(tiny_lm, [([1], [2]), ([1], [vocab])])
    with pytest.raises(ConfigError, match=r"token id -1 is outside the vocabulary"):
        loglikelihood_rolling(tiny_lm, [1, 2, 3], prefix_token=-1)


@pytest.mark.parametrize("max_length", [0, -1])
def test_max_length_below_one_is_refused(tiny_lm, max_length):
    with pytest.raises(ConfigError, match=f"max_length: must be >= 1 .*got {max_length}"):
        loglikelihood(tiny_lm, [([1, 2], [3])], max_length=max_length)
    with pytest.raises(ConfigError, match=f"max_length: must be >= 1 .*got {max_length}"):
        loglikelihood_rolling(tiny_lm, [1, 2, 3], prefix_token=0, max_length=max_length)


def test_text_bits_per_byte(tiny_lm, tokenizer):
    text = "The quick brown fox."
    ids = tokenizer.encode(text)
    nll = -_brute(tiny_lm, [tokenizer.bos_id], ids)[0]
    assert text_bits_per_byte(tiny_lm, tokenizer, text) == pytest.approx(nll / (len(text.encode()) * math.log(2)),
                                                                         rel=1e-5)
