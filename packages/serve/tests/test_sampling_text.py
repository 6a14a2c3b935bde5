"""Logits processors against transformers' warpers; incremental detokenization and stop strings (properties)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from serve.sampling import SamplingParams, apply_penalties, apply_truncation, sample, token_counts
from serve.text import IncrementalDetokenizer, StopStringMatcher
from specs.errors import ConfigError


def _kept(logits):
    return torch.isfinite(logits) & (logits > torch.finfo(logits.dtype).min)


@pytest.mark.parametrize("kw,hf", [
    (dict(temperature=0.7, top_k=5), [TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)]),
    (dict(temperature=1.0, top_p=0.6), [TopPLogitsWarper(0.6)]),
    (dict(temperature=1.5, min_p=0.2), [TemperatureLogitsWarper(1.5), MinPLogitsWarper(0.2)]),
    (dict(temperature=0.9, top_k=8, top_p=0.7, min_p=0.05),
     [TemperatureLogitsWarper(0.9), TopKLogitsWarper(8), TopPLogitsWarper(0.7), MinPLogitsWarper(0.05)]),
])
def test_truncation_keeps_what_transformers_keeps(kw, hf):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ref = logits.clone()
    for w in hf:
        ref = w(None, ref)
    ours = apply_truncation(logits, [SamplingParams(**kw)] * 4)
    assert torch.equal(_kept(ours), torch.isfinite(ref))
    assert torch.allclose(ours.softmax(-1), ref.softmax(-1), atol=1e-6)


def test_repetition_penalty_equals_transformers():
    torch.manual_seed(1)
    logits = torch.randn(2, 30)
    ids = torch.randint(0, 30, (2, 12))
    ref = RepetitionPenaltyLogitsProcessor(1.5)(ids, logits.clone())
    ours = apply_penalties(logits, [SamplingParams(repetition_penalty=1.5)] * 2, token_counts(ids, 30), None)
    assert torch.allclose(ours, ref)


def test_presence_frequency_penalties_follow_openai_formula():
    logits = torch.zeros(1, 6)
    out = token_counts([[2, 2, 2, 4]], 6)
    got = apply_penalties(logits, [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)], out, out)
    assert got.tolist() == [[0, 0, -(0.5 + 3 * 0.25), 0, -(0.5 + 0.25), 0]]


def test_rows_use_their_own_parameters():
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]] * 2)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1)]
    assert sample(logits, params).tolist() == [1, 1]
    gens = [None, torch.Generator().manual_seed(0)]
    flat = [SamplingParams(temperature=0.0), SamplingParams(temperature=50.0)]
    draws = {int(sample(logits, flat, gens)[1]) for _ in range(200)}
    assert draws == {0, 1, 2, 3}  # a hot row samples everything while the greedy row stays put


def test_sampling_params_validate_with_field_names():
    with pytest.raises(ConfigError, match="SamplingParams.top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ConfigError, match="stop"):
        SamplingParams(stop=("",))
    with pytest.raises(ConfigError, match="logprobs"):
        SamplingParams(logprobs=21)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcé東 \n✓", max_size=40), st.lists(st.sampled_from(["ab", "é東", "\n\n", "c", "✓ a"]),
                                                           max_size=3), st.data())
def test_stop_matcher_equals_cutting_the_full_text(text, stops, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    m = StopStringMatcher(stops)
    out = "".join(m.push(p) for p in pieces)
    out += m.flush()
    hits = [text.find(s) for s in stops if s in text]
    expected = text[: min(hits)] if hits else text
    assert out == expected
    assert (m.stopped is not None) == bool(hits)


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ab é東✓\n", min_size=1, max_size=30))
def test_incremental_detokenizer_deltas_join_to_the_full_decode(text):
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    ids = tok.encode(text)  # multi-byte characters span several tokens
    det = IncrementalDetokenizer(tok, prompt_ids=tok.encode("x"))
    deltas = [det.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + det.flush() == text


def test_detokenizer_with_bpe_spaces(tokenizer):
    text = "The quick brown fox jumps over café 東京 ✓."
    ids = tokenizer.encode(text)
    det = IncrementalDetokenizer(tokenizer, prompt_ids=tokenizer.encode("Start:"))
    assert "".join(det.push(i) for i in ids) + det.flush() == tokenizer.decode(ids)
