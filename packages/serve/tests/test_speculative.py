"""Speculative decoding: greedy output equals plain greedy; the rejection scheme samples the target distribution."""

from __future__ import annotations

import pytest
import torch

from model.lm import TransformerLM
from serve.generate import generate
from serve.speculative import accept_draft
from specs.errors import ConfigError
from specs.presets import preset


@pytest.fixture(scope="module")
def draft():
    torch.manual_seed(42)
    return TransformerLM(preset("llama-debug", vocab_size=300, n_layers=1, init_std=0.2)).eval()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_plain_greedy(tiny_lm, draft, k):
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    plain = generate(tiny_lm, ids, max_new_tokens=25, return_dict=True)
    spec = generate(tiny_lm, ids, max_new_tokens=25, draft_model=draft, num_draft_tokens=k, return_dict=True)
    assert torch.equal(spec.sequences, plain.sequences)
    assert spec.stats["target_forwards"] < 25 or spec.stats["accepted"] == 0


def test_speculative_with_itself_accepts_everything(tiny_lm):
    ids = torch.tensor([[3, 4, 5]])
    spec = generate(tiny_lm, ids, max_new_tokens=20, draft_model=tiny_lm, num_draft_tokens=4, return_dict=True)
    assert torch.equal(spec.sequences, generate(tiny_lm, ids, max_new_tokens=20))
    assert spec.stats["accepted"] == spec.stats["drafted"]
    assert spec.stats["target_forwards"] == 1 + 4  # prefill + ceil(19 / 5) verification passes


def test_speculative_respects_eos_and_logprobs(tiny_lm, draft):
    ids = torch.tensor([[21, 22, 23]])
    plain = generate(tiny_lm, ids, max_new_tokens=20, logprobs=1, return_dict=True)
    eos = plain.tokens[0][6]
    ref = generate(tiny_lm, ids, max_new_tokens=20, eos_token_id=eos, logprobs=1, return_dict=True)
    spec = generate(tiny_lm, ids, max_new_tokens=20, eos_token_id=eos, draft_model=draft, num_draft_tokens=4,
                    logprobs=1, return_dict=True)
    assert spec.tokens == ref.tokens and spec.finish_reasons == ["stop"]
    for a, b in zip(spec.logprobs[0], ref.logprobs[0]):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-4)


@pytest.mark.parametrize("T, new", [(60, 10), (70, 5), (250, 10)])
def test_short_draft_hands_over_to_the_target(tiny_lm, T, new):
    """A draft with a smaller max_seq_len drafts while it has room, then the target decodes alone: same output."""
    torch.manual_seed(3)
    short = TransformerLM(preset("llama-debug", vocab_size=300, max_seq_len=64, n_layers=1, init_std=0.2)).eval()
    ids = torch.arange(T)[None] % 300
    plain = generate(tiny_lm, ids, max_new_tokens=new, return_dict=True)
    spec = generate(tiny_lm, ids, max_new_tokens=new, draft_model=short, num_draft_tokens=3, return_dict=True)
    assert torch.equal(spec.sequences, plain.sequences) and spec.finish_reasons == plain.finish_reasons
    assert len(spec.tokens[0]) == min(new, 256 - T + 1)
    assert (spec.stats["drafted"] > 0) == (T < 64)  # a prompt that fills the draft leaves the target alone


def test_draft_with_another_vocabulary_is_refused(tiny_lm):
    other = TransformerLM(preset("llama-debug", n_layers=1)).eval()  # vocab 512 against the target's 300
    with pytest.raises(ConfigError, match="draft_model: vocab_size 512 differs from the target's 300"):
        generate(tiny_lm, [[1, 2]], max_new_tokens=4, draft_model=other)


def test_accept_draft_samples_the_target_distribution():
    """Vectorised check of the rejection rule: the emitted token at each position is distributed as p."""
    torch.manual_seed(0)
    V, K, N = 5, 2, 6000
    p = torch.softmax(torch.randn(K + 1, V) * 1.5, -1)
    q = torch.softmax(torch.randn(K, V) * 1.5, -1)
    g = torch.Generator().manual_seed(1)
    first = torch.zeros(V)
    for _ in range(N):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=g) for i in range(K)]).squeeze(-1)
        n, nxt = accept_draft(p[:K], q, drafts, p[K], g)
        tok = int(drafts[0]) if n >= 1 else nxt
        first[tok] += 1
    emp = first / N
    assert torch.allclose(emp, p[0], atol=0.025), (emp, p[0])  # ~4 standard errors
    assert not torch.allclose(q[0], p[0], atol=0.1)  # the draft law alone would fail


def test_speculative_sampling_matches_target_distribution():
    """End to end on a 4-token vocabulary: the joint law of two sampled tokens equals the target's."""
    torch.manual_seed(5)
    target = TransformerLM(preset("llama-debug", vocab_size=4, n_layers=1, init_std=0.5)).eval()
    torch.manual_seed(6)
    draft = TransformerLM(preset("llama-debug", vocab_size=4, n_layers=1, init_std=0.5)).eval()
    prompt = [1, 2]
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt]))[0, -1], -1)
        joint = torch.zeros(4, 4)
        for a in range(4):
            p2 = torch.softmax(target(torch.tensor([prompt + [a]]))[0, -1], -1)
            joint[a] = p1[a] * p2
    n = 600
    counts = torch.zeros(4, 4)
    g = torch.Generator().manual_seed(7)
    for _ in range(n):
        out = generate(target, [prompt], max_new_tokens=2, temperature=1.0, draft_model=draft, num_draft_tokens=2,
                       generator=g, return_dict=True)
        a, b = out.tokens[0]
        counts[a, b] += 1
    # Pearson chi-square over the 16 cells (15 dof): the 99.9% quantile is 37.7.
    expected = joint * n
    chi2 = float(((counts - expected) ** 2 / expected.clamp(min=1e-9)).sum())
    assert chi2 < 37.7, (chi2, counts, expected)
    # ... while the draft's own law is far from it (so the test can tell them apart).
    with torch.no_grad():
        q1 = torch.softmax(draft(torch.tensor([prompt]))[0, -1], -1)
    assert float((q1 - p1).abs().sum()) > 0.2
