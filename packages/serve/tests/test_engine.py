"""The continuous-batching engine: same tokens as generate(), prefix caching, preemption, cancellation, limits."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from serve.engine import Engine
from serve.errors import ContextLengthError, RequestTooLargeError, ServerBusyError
from serve.generate import generate
from serve.sampling import SamplingParams
from specs.config import ServeConfig
from specs.errors import ConfigError


def _collect(engine, prompts, params):
    outs = {}

    def sink(rid):
        def on(out):
            outs.setdefault(rid, []).append(out)
        return on

    rids = []
    for i, (p, sp) in enumerate(zip(prompts, params)):
        rids.append(engine.submit(p, sp, on_output=sink(f"r{i}"), request_id=f"r{i}"))
    engine.run_until_done()
    return [outs[r] for r in rids]


def _tokens(outs):
    return [t for o in outs for t in o.token_ids]


def test_mixed_requests_match_generate(tiny_lm):
    """Requests of different lengths and parameters, admitted at different steps, give generate()'s tokens."""
    engine = Engine(tiny_lm, None, ServeConfig(max_batch_size=3, block_size=4, num_blocks=64))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 4)]
    params = [SamplingParams(max_new_tokens=n) for n in (10, 4, 7, 12, 6)]
    params[2] = SamplingParams(max_new_tokens=7, temperature=0.8, seed=5)
    params[4] = SamplingParams(max_new_tokens=6, repetition_penalty=1.4, frequency_penalty=0.5)
    results = _collect(engine, prompts, params)
    for p, sp, outs in zip(prompts, params, results):
        ref = generate(tiny_lm, [p], params=sp, return_dict=True)
        assert _tokens(outs) == ref.tokens[0]
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert sum(1 for o in outs if o.finished) == 1
    assert engine.cache.num_free_blocks() == 64
    assert engine.stats.finished == {"length": 5}


def test_prefix_caching_shares_prompt_blocks(tiny_lm):
    engine = Engine(tiny_lm, None, ServeConfig(block_size=4, num_blocks=32))
    shared = list(range(10, 22))  # three full blocks
    first = _collect(engine, [shared + [5]], [SamplingParams(max_new_tokens=3)])[0]
    second = _collect(engine, [shared + [6, 7]], [SamplingParams(max_new_tokens=3)])[0]
    assert first[0].num_cached_tokens == 0 and second[0].num_cached_tokens == 12
    assert engine.stats.cached_prompt_tokens == 12
    ref = generate(tiny_lm, [shared + [6, 7]], max_new_tokens=3, return_dict=True).tokens[0]
    assert _tokens(second) == ref


def test_preemption_by_recompute_keeps_outputs_exact(tiny_lm):
    """A pool too small for all running requests forces preemptions; outputs still equal generate()'s."""
    engine = Engine(tiny_lm, None, ServeConfig(max_batch_size=4, block_size=4, num_blocks=10, prefix_caching=False))
    prompts = [[5 + i] * 6 for i in range(4)]
    params = [SamplingParams(max_new_tokens=10)] * 4
    results = _collect(engine, prompts, params)
    assert engine.stats.preemptions > 0
    for p, outs in zip(prompts, results):
        assert _tokens(outs) == generate(tiny_lm, [p], max_new_tokens=10, return_dict=True).tokens[0]
    assert engine.cache.num_free_blocks() == 10


def test_limits_raise_clear_errors(tiny_lm):
    engine = Engine(tiny_lm, None, ServeConfig(block_size=4, num_blocks=4, max_seq_len=64), max_waiting=2)
    with pytest.raises(ContextLengthError, match="maximum context length is 64"):
        engine.submit([1] * 60, SamplingParams(max_new_tokens=10), on_output=print)
    with pytest.raises(RequestTooLargeError, match="needs 5 KV-cache blocks"):
        engine.submit([1] * 10, SamplingParams(max_new_tokens=10), on_output=print)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.submit([1, 999], SamplingParams(max_new_tokens=1), on_output=print)
    engine.submit([1, 2], SamplingParams(max_new_tokens=1), on_output=lambda o: None)
    engine.submit([1, 2], SamplingParams(max_new_tokens=1), on_output=lambda o: None)
    with pytest.raises(ServerBusyError):
        engine.submit([1, 2], SamplingParams(max_new_tokens=1), on_output=lambda o: None)
    limit = tiny_lm.config.max_seq_len  # a longer context than the model's positions is refused, not clamped
    with pytest.raises(ConfigError, match=f"serve.max_seq_len: {limit + 1} exceeds the model's context length"):
        Engine(tiny_lm, None, ServeConfig(block_size=4, max_seq_len=limit + 1))
    assert Engine(tiny_lm, None, ServeConfig(block_size=4, num_blocks=8, max_seq_len=limit)).max_seq_len == limit


def test_device_names_are_checked():
    from serve.loading import pick_device

    assert pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'nope' is not a device; expected auto, cpu, cuda or cuda:N"):
        pick_device("nope")


def test_stop_strings_eos_and_text(tiny_lm, tokenizer):
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=32))
    prompt = tokenizer.encode("The quick brown")
    ref = generate(tiny_lm, [prompt], max_new_tokens=20, tokenizer=tokenizer, return_dict=True)
    stop = ref.texts[0][4:6]
    outs = _collect(engine, [prompt], [SamplingParams(max_new_tokens=20, stop=(stop,))])[0]
    want = generate(tiny_lm, [prompt], max_new_tokens=20, tokenizer=tokenizer, stop=[stop], return_dict=True)
    assert "".join(o.text for o in outs) == want.texts[0] and outs[-1].finish_reason == "stop"
    assert engine.eos_ids == {tokenizer.eos_id}


def test_prompt_logprobs_and_zero_max_tokens(tiny_lm):
    engine = Engine(tiny_lm, None, ServeConfig(block_size=4, num_blocks=16))
    prompt = [7, 8, 9, 10, 11, 12, 13, 14, 15]
    _collect(engine, [prompt], [SamplingParams(max_new_tokens=1)])  # warm the prefix cache
    outs = _collect(engine, [prompt], [SamplingParams(max_new_tokens=0, prompt_logprobs=1)])[0]
    assert len(outs) == 1 and outs[0].finished and outs[0].token_ids == ()
    ref = generate(tiny_lm, [prompt], max_new_tokens=1, prompt_logprobs=1, return_dict=True).prompt_logprobs[0]
    got = outs[0].prompt_logprobs
    assert got[0] is None and len(got) == len(prompt)
    assert [round(x.logprob, 4) for x in got[1:]] == [round(x.logprob, 4) for x in ref[1:]]


def test_background_thread_cancellation_frees_blocks(tiny_lm):
    engine = Engine(tiny_lm, None, ServeConfig(block_size=4, num_blocks=64))
    engine.start()
    try:
        got, done = [], threading.Event()

        def on(out):
            got.append(out)
            if out.finished:
                done.set()

        rid = engine.submit([1, 2, 3, 4, 5], SamplingParams(max_new_tokens=200, ignore_eos=True), on_output=on)
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.cache.num_free_blocks() < 64
        engine.abort(rid)
        assert done.wait(20)
        assert got[-1].finish_reason == "abort" and len(got) < 200
        assert engine.cache.num_free_blocks() == 64 and not engine.running
    finally:
        engine.shutdown()


class _Broken(torch.nn.Module):
    """A model whose forward fails after a few calls (a device error, a bug)."""

    def __init__(self, inner, fail_after):
        super().__init__()
        self.inner, self.config, self.calls, self.fail_after = inner, inner.config, 0, fail_after

    def new_cache(self, *a, **kw):
        return self.inner.new_cache(*a, **kw)

    def forward(self, *a, **kw):
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("device lost")
        return self.inner(*a, **kw)


def test_engine_failure_fails_requests_and_keeps_serving(tiny_lm):
    broken = _Broken(tiny_lm, fail_after=3)
    engine = Engine(broken, None, ServeConfig(block_size=4, num_blocks=32))
    engine.start()
    try:
        got, done = [], threading.Event()

        def on(out):
            got.append(out)
            if out.finished:
                done.set()

        engine.submit([1, 2, 3], SamplingParams(max_new_tokens=20), on_output=on)
        assert done.wait(20)
        assert got[-1].finish_reason == "error" and "device lost" in str(got[-1].error)
        assert engine.cache.num_free_blocks() == 32 and engine.is_running()
        broken.fail_after = 10**9  # recovered: the next request is served normally
        done.clear()
        got.clear()
        engine.submit([1, 2, 3], SamplingParams(max_new_tokens=4), on_output=on)
        assert done.wait(20) and got[-1].finish_reason == "length"
    finally:
        engine.shutdown()
