"""PolicySampler: an engine over a copy of a policy that trains; its samples are generate()'s on the policy's
current weights, after every sync, with no stale prefix-cache hits."""

from __future__ import annotations

import copy

import pytest
import torch

from serve.generate import generate
from serve.policy import PolicySampler
from specs.errors import ConfigError
from specs.plugins import resolve


@pytest.fixture()
def policy(tiny_lm):
    return copy.deepcopy(tiny_lm)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a GPU (CPU case runs)")


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # lengths across the engine's 4-token blocks; the last two share a 9-token (two-block) prefix
    out = [torch.randint(3, 300, (k,), generator=g).tolist() for k in (3, 9, 5, 12)]
    return [*out[:n], out[3][:9] + [7, 8]]


def _greedy(model, prompts, n, eos):
    got = [generate(model, [p], n, eos_token_id=eos, return_dict=True) for p in prompts]
    return [r.tokens[0] for r in got], [r.finish_reasons[0] for r in got]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_samples_follow_the_policy_through_syncs(policy, device):
    """On a GPU the engine replays CUDA graphs captured before the syncs: they read the copied weights."""
    policy = policy.to(device)
    prompts = _prompts(4)
    want, _ = _greedy(policy, prompts, 10, None)
    eos = want[1][4]  # a token the policy makes: one row stops on it
    sampler = PolicySampler(policy, max_batch_size=3, max_seq_len=32, eos_ids=(eos,), block_size=4)
    assert (sampler.engine.graphs is not None and bool(sampler.engine.graphs.graphs)) == (device == "cuda")
    assert sampler.model is not policy and sampler.model.lm_head.weight.data_ptr() != policy.lm_head.weight.data_ptr()
    for round_ in range(3):
        want, reasons = _greedy(policy, prompts, 10, eos)
        out = sampler.sample(prompts, 10, temperature=0.0)
        assert out.tokens == want and out.finish_reasons == reasons, round_
        assert round_ > 0 or ("stop" in reasons and "length" in reasons)
        assert sampler.engine.cache.pool.num_cached() > 0  # the shared prefix was cached this round...
        with torch.no_grad():  # ...an optimizer step changes the policy, and the sampler follows it
            for p in policy.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        before = [p.detach().clone() for p in sampler.model.parameters()]
        ptrs = [p.data_ptr() for p in sampler.model.parameters()]
        sampler.sync(policy.state_dict())
        assert sampler.engine.cache.pool.num_cached() == 0  # prefixes of the old weights are gone
        assert ptrs == [p.data_ptr() for p in sampler.model.parameters()]  # in place: captured graphs stay valid
        assert any(not torch.equal(a, p) for a, p in zip(before, sampler.model.parameters()))


def test_seeded_sampling_repeats_and_truncation_applies(policy):
    prompts = _prompts(3)
    sampler = PolicySampler(policy, max_batch_size=8, max_seq_len=32, block_size=4)
    a = sampler.sample(prompts, 8, temperature=1.0, seed=3)
    assert sampler.engine.cache.pool.num_cached() > 0  # the next call starts without them: it repeats exactly
    b = sampler.sample(prompts, 8, temperature=1.0, seed=3)
    c = sampler.sample(prompts, 8, temperature=1.0, seed=4)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    top1 = sampler.sample(prompts, 8, temperature=1.0, top_k=1, seed=5)  # top-k 1 is greedy
    assert top1.tokens == _greedy(policy, prompts, 8, None)[0]


def test_a_bf16_copy_of_an_fp32_policy(policy):
    sampler = PolicySampler(policy, max_batch_size=2, max_seq_len=16, dtype=torch.bfloat16, block_size=4)
    assert {p.dtype for p in sampler.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    torch.testing.assert_close(sampler.model.lm_head.weight.float(), policy.lm_head.weight, rtol=1e-2, atol=1e-2)
    out = sampler.sample(_prompts(2), 4, temperature=0.0)
    assert [len(t) for t in out.tokens] == [4, 4, 4]


def test_bad_input_is_named(policy):
    sampler = PolicySampler(policy, max_batch_size=2, max_seq_len=16, block_size=4)
    state = {k: v for k, v in policy.state_dict().items() if not k.endswith("lm_head.weight")}
    with pytest.raises(ConfigError, match=r"state_dict: does not fit .* policy: missing \['lm_head.weight'\]"):
        sampler.sync(state)
    with pytest.raises(ConfigError, match="max_seq_len: 100000 exceeds the model's context length"):
        PolicySampler(policy, max_batch_size=2, max_seq_len=100_000)
    with pytest.raises(Exception, match="maximum context length is 16 tokens"):
        sampler.sample([[5] * 12], 8)
    assert not sampler.engine.has_work()
    assert resolve("lmstack.samplers", "paged") is PolicySampler


def test_score_is_the_copys_log_probabilities(policy):
    sampler = PolicySampler(policy, max_batch_size=2, max_seq_len=32, block_size=4)
    prompts = _prompts(3)
    out = sampler.sample(prompts, 5, temperature=1.0, seed=1)
    got = sampler.score(prompts, out.tokens, temperature=0.7, rows=2)
    for p, c, lp in zip(prompts, out.tokens, got):
        with torch.no_grad():
            logits = policy(torch.tensor([p + c]))[0].float() / 0.7
        want = torch.log_softmax(logits, -1)[len(p) - 1:len(p) - 1 + len(c)].gather(-1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="completions: 1 completions for 4 prompts"):
        sampler.score(prompts, out.tokens[:1])
