"""serve.offline.run_requests: generate()'s greedy tokens, exact counts and ordered timestamps under batching."""

from __future__ import annotations

import pytest
import torch

from serve.generate import generate
from serve.offline import run_requests
from specs.errors import ConfigError, LmstackError
from specs.plugins import resolve


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 300, (n,), generator=g).tolist() for n in lengths]


def test_tokens_match_generate_with_more_requests_than_slots(tiny_lm):
    prompts = _prompts((5, 9, 3, 12, 7))
    n = 6
    res = run_requests(tiny_lm, prompts, n, max_batch_size=2, block_size=4)
    assert [r["request_id"] for r in res] == [f"req-{i}" for i in range(5)]
    for p, r in zip(prompts, res):
        ref = generate(tiny_lm, [p], max_new_tokens=n, return_dict=True)
        assert r["token_ids"] == ref.tokens[0]
        assert len(r["token_times"]) == len(r["token_steps"]) == n
        assert r["finish_reason"] == "length" and r["num_prompt_tokens"] == len(p)
        times = [r["submit_time"], *r["token_times"]]
        assert all(a <= b for a, b in zip(times, times[1:]))
        assert all(a < b for a, b in zip(r["token_steps"], r["token_steps"][1:]))  # one token per step
    # Two slots: the last two requests wait for earlier ones, so they start at later steps.
    assert res[4]["token_steps"][0] > res[0]["token_steps"][-1]
    assert res[0]["engine_steps"] == max(s for r in res for s in r["token_steps"]) + 1
    assert res[0]["preemptions"] == 0


def test_small_pool_preempts_and_still_matches(tiny_lm):
    prompts = _prompts((8, 8, 8), seed=1)
    res = run_requests(tiny_lm, prompts, 8, max_batch_size=3, block_size=4, num_blocks=9)
    for p, r in zip(prompts, res):
        assert r["token_ids"] == generate(tiny_lm, [p], max_new_tokens=8, return_dict=True).tokens[0]
    assert res[0]["preemptions"] > 0


def test_entry_point_and_errors(tiny_lm):
    assert resolve("lmstack.engines", "paged") is run_requests
    with pytest.raises(ConfigError, match="prompts"):
        run_requests(tiny_lm, [], 4, max_batch_size=2)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        run_requests(tiny_lm, [[1, 2]], 0, max_batch_size=2)
    with pytest.raises(ConfigError, match="prefix_cachin.*valid keys"):
        run_requests(tiny_lm, [[1, 2]], 2, max_batch_size=2, prefix_cachin=False)
    with pytest.raises(LmstackError, match="maximum context length"):
        run_requests(tiny_lm, [[1] * 250], 10, max_batch_size=2)


def test_structured_requests_keep_to_their_grammar(tiny_lm, tokenizer):
    import re

    res = run_requests(tiny_lm, [tokenizer.encode("a"), tokenizer.encode("bc")], 12, max_batch_size=2, block_size=4,
                       tokenizer=tokenizer, structured={"regex": "[a-z ]*"})
    for r in res:
        assert len(r["token_ids"]) == 12 and re.fullmatch("[a-z ]*", tokenizer.decode(r["token_ids"]))
