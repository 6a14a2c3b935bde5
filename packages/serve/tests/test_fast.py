"""FastGenerator: the fixed-cache decode loop equals step-by-step greedy decoding, also when traced as one graph."""

import time

import pytest
import torch

from serve.fast import FastGenerator
from specs.errors import ConfigError, ShapeError


def reference_greedy(model, prompt, n):
    ids = prompt
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids[:, prompt.shape[1]:]


@pytest.mark.parametrize("compile", [None, "default"])
def test_greedy_equals_full_recompute(tiny_lm, compile):
    torch._dynamo.reset()
    torch.manual_seed(0)
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (2, 6))
    gen = FastGenerator(tiny_lm, 2, 32, compile=compile, backend="eager")
    with torch.no_grad():
        out = gen.generate(prompt, 8)
        assert torch.equal(out, reference_greedy(tiny_lm, prompt, 8))
        assert torch.equal(gen.generate(prompt, 8), out)  # the cache resets between calls
    assert gen.cache.seq_lens.tolist() == [6 + 7, 6 + 7]


def test_sampling_is_seeded_and_follows_temperature(tiny_lm):
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (2, 4))
    gen = FastGenerator(tiny_lm, 2, 32, compile=None)
    a = gen.generate(prompt, 10, temperature=1.0, seed=1)
    b = gen.generate(prompt, 10, temperature=1.0, seed=1)
    c = gen.generate(prompt, 10, temperature=1.0, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    cold = gen.generate(prompt, 10, temperature=1e-6, seed=3)
    assert torch.equal(cold, gen.generate(prompt, 10))  # near-zero temperature is greedy


def test_the_decode_clock_times_the_decode_steps_and_leaves_the_prefill_out(tiny_lm, monkeypatch):
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (1, 6))
    gen = FastGenerator(tiny_lm, 1, 32, compile=None)
    gen.generate(prompt, 4)
    assert gen.last_decode_s is None  # not asked for
    real = type(tiny_lm).forward

    def slow(self, ids, *args, **kwargs):  # the prompt's forward 0.5 s, each one-token step 20 ms
        time.sleep(0.5 if ids.shape[1] > 1 else 0.02)
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(tiny_lm), "forward", slow)
    gen.record_decode_time = True
    gen.generate(prompt, 6)
    assert 5 * 0.02 <= gen.last_decode_s < 0.45  # the five decode steps, not the prefill
    gen.generate(prompt, 1)
    assert gen.last_decode_s is None  # no decode step: nothing to time


def test_bad_requests(tiny_lm):
    gen = FastGenerator(tiny_lm, 1, 16, compile=None)
    with pytest.raises(ShapeError, match="exceeds"):
        gen.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    with pytest.raises(ShapeError, match="B"):
        gen.generate(torch.zeros(2, 4, dtype=torch.long), 2)
    with pytest.raises(ConfigError):
        gen.generate(torch.zeros(1, 4, dtype=torch.long), 0)


def test_generators_do_not_share_compiled_entries(tiny_lm):
    torch._dynamo.reset()
    p1 = torch.randint(0, tiny_lm.config.vocab_size, (1, 4))
    p2 = torch.randint(0, tiny_lm.config.vocab_size, (3, 4))
    with torch._dynamo.config.patch(error_on_recompile=True):
        a = FastGenerator(tiny_lm, 1, 16, compile="default", backend="eager")
        b = FastGenerator(tiny_lm, 3, 16, compile="default", backend="eager")
        a.generate(p1, 5)
        b.generate(p2, 5)  # a shared code object would recompile here and raise
        a.generate(p1, 5)


def test_pdl_compiles_with_the_modes_options_plus_inductors_pdl(tiny_lm, monkeypatch):
    """pdl=True: torch.compile gets the mode's inductor options plus triton.enable_pdl (torch takes a mode or
    options, not both); the tokens are the plain loop's."""
    seen = []

    def recording_compile(fn, **kwargs):
        seen.append(kwargs)
        return fn

    prompt = torch.randint(0, tiny_lm.config.vocab_size, (1, 5))
    with monkeypatch.context() as m:
        m.setattr(torch, "compile", recording_compile)
        out = FastGenerator(tiny_lm, 1, 16, compile="reduce-overhead", pdl=True).generate(prompt, 6)
        FastGenerator(tiny_lm, 1, 16, compile="reduce-overhead").generate(prompt, 2)
    assert seen[0]["options"] == {"triton.cudagraphs": True, "triton.enable_pdl": True} and "mode" not in seen[0]
    assert seen[1]["mode"] == "reduce-overhead" and "options" not in seen[1]
    with torch.no_grad():
        assert torch.equal(out, reference_greedy(tiny_lm, prompt, 6))


def test_pdl_under_real_inductor_on_cpu_is_accepted_and_changes_nothing(tiny_lm):
    torch._dynamo.reset()
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (1, 5))
    out = FastGenerator(tiny_lm, 1, 16, compile="default", pdl=True).generate(prompt, 4)  # CPU: no PDL kernels
    with torch.no_grad():
        assert torch.equal(out, reference_greedy(tiny_lm, prompt, 4))


def test_pdl_needs_inductor_and_a_mode(tiny_lm):
    with pytest.raises(ConfigError, match="pdl=True is an inductor option"):
        FastGenerator(tiny_lm, 1, 16, compile=None, pdl=True)
    with pytest.raises(ConfigError, match="backend='eager'"):
        FastGenerator(tiny_lm, 1, 16, compile="default", backend="eager", pdl=True)


def test_pdl_auto_turns_it_on_only_where_it_applies(tiny_lm, monkeypatch):
    """The default pdl="auto": off on a CPU model, on for a Hopper-class device (faked here), and never an error
    where it cannot apply (eager, another backend); a value other than True/False/"auto" is refused."""
    import serve.fast as fast

    assert FastGenerator(tiny_lm, 1, 16).pdl is False  # CPU parameters
    assert fast._pdl_capable_device(tiny_lm) is False
    seen = []
    with monkeypatch.context() as m:
        m.setattr(fast, "_pdl_capable_device", lambda model: True)
        m.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
        assert FastGenerator(tiny_lm, 1, 16).pdl is True
        FastGenerator(tiny_lm, 1, 16).generate(torch.randint(0, 50, (1, 3)), 2)
        assert FastGenerator(tiny_lm, 1, 16, compile=None).pdl is False
        assert FastGenerator(tiny_lm, 1, 16, compile="default", backend="eager").pdl is False
        assert FastGenerator(tiny_lm, 1, 16, pdl=False).pdl is False
    assert seen[0]["options"]["triton.enable_pdl"] is True
    with pytest.raises(ConfigError, match="pdl must be True, False or 'auto', got 'yes'"):
        FastGenerator(tiny_lm, 1, 16, pdl="yes")


@pytest.mark.parametrize("compiled", [False, True])
def test_the_two_pass_argmax_is_torchs_argmax_ties_nan_and_masked_rows_included(compiled):
    """argmax_rows (the greedy pick): the first index of the largest value, NaN counting as largest, an all -inf row
    giving 0, for vocabularies that are and are not a multiple of its 64 slices; eager and under inductor."""
    from serve.fast import argmax_rows

    fn = torch.compile(argmax_rows, fullgraph=True) if compiled else argmax_rows
    g = torch.Generator().manual_seed(0)
    torch._dynamo.reset()
    for V in (4096, 32000, 50257):
        x = torch.randint(-3, 3, (4, V), generator=g).float()  # many ties
        x[1, torch.randint(0, V, (3,), generator=g)] = float("nan")
        x[2] = float("-inf")
        x[3, V - 1] = 10.0  # the maximum in the padded last slice
        assert torch.equal(fn(x), x.argmax(-1, keepdim=True)), V
    small = torch.randn(2, 100, generator=g)
    assert torch.equal(argmax_rows(small), small.argmax(-1, keepdim=True))


def test_own_graphs_capture_the_step_once_per_kind_after_its_warmup(tiny_lm, monkeypatch):
    """The own-graph path (GRAPHS_ENV "step", the default for "reduce-overhead" on CUDA; forced here on a CPU model
    with the capture stood in for): WARMUP_STEPS compiled steps, then one capture per kind (greedy, sampled) that
    every later step and generate() call replays; sampled replays read each step's noise from one buffer. Tokens
    equal the plain loop's, greedy and sampled."""
    import serve.fast as fast

    captured, replays = [], []

    def capture(fn):  # a capture records the step without running it; a replay reruns it on the same buffers
        captured.append(fn)
        return lambda: replays.append(fn) or fn()

    monkeypatch.setattr(fast, "_capture", capture)
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (2, 5))
    plain = FastGenerator(tiny_lm, 2, 32, compile=None)
    want, want_sampled = plain.generate(prompt, 9), plain.generate(prompt, 9, temperature=0.8, seed=4)
    gen = FastGenerator(tiny_lm, 2, 32, compile="default", backend="eager")
    assert gen.own_graphs is False  # a CPU model
    gen.own_graphs = True
    steps = []
    real_step = gen._decode_one
    gen._step = lambda noise: steps.append(noise) or real_step(noise)
    gen._ensure_compiled = lambda: None  # keep the counting step
    assert torch.equal(gen.generate(prompt, 9), want)
    assert len(captured) == 1 and len(steps) == 8 and len(replays) == 8 - fast.WARMUP_STEPS
    assert torch.equal(gen.generate(prompt, 9), want)
    assert len(captured) == 1 and len(replays) == 16 - fast.WARMUP_STEPS  # replayed, not captured again
    assert torch.equal(gen.generate(prompt, 9, temperature=0.8, seed=4), want_sampled)
    assert len(captured) == 2 and gen._noise is not None
    buf = gen._noise
    assert torch.equal(gen.generate(prompt, 9, temperature=0.8, seed=4), want_sampled) and gen._noise is buf
    assert all(n is buf for n in steps[-8:])  # every sampled replay read the one buffer


def test_own_graphs_apply_to_reduce_overhead_on_cuda_only_and_can_be_turned_off(tiny_lm, monkeypatch):
    """GRAPHS_ENV: "trees" leaves the step to torch.compile's CUDA-graph trees, a bad value is refused by name; a
    CPU model, or another mode, never takes the own-graph path; the compile options then keep the mode's."""
    import serve.fast as fast

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    assert FastGenerator(tiny_lm, 1, 16).own_graphs is False  # CPU
    monkeypatch.setenv(fast.GRAPHS_ENV, "trees")
    assert FastGenerator(tiny_lm, 1, 16).own_graphs is False
    monkeypatch.setenv(fast.GRAPHS_ENV, "graphs")
    with pytest.raises(ConfigError, match="LMSTACK_DECODE_GRAPHS.*'step'.*'trees'.*got 'graphs'"):
        FastGenerator(tiny_lm, 1, 16)
    monkeypatch.setenv(fast.GRAPHS_ENV, "step")
    gen = FastGenerator(tiny_lm, 1, 16)
    gen.own_graphs = True  # as on CUDA: inductor gets the mode's options without CUDA-graph trees
    gen._ensure_compiled()
    assert seen[-1]["options"] == {"triton.cudagraphs": False} and "mode" not in seen[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_own_graphs_on_cuda_give_the_trees_tokens(tiny_lm, monkeypatch):
    """On a GPU: the step captured in the generator's own CUDA graph gives the tokens of torch.compile's CUDA-graph
    trees and of the eager loop, greedy and sampled, across generate() calls."""
    import copy

    import serve.fast as fast

    model = copy.deepcopy(tiny_lm).cuda()
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), device="cuda")
    eager = FastGenerator(copy.deepcopy(model), 2, 48, compile=None)
    want, want_s = eager.generate(prompt, 20), eager.generate(prompt, 20, temperature=0.7, seed=3)
    for graphs in ("step", "trees"):
        torch._dynamo.reset()
        monkeypatch.setenv(fast.GRAPHS_ENV, graphs)
        gen = FastGenerator(copy.deepcopy(model), 2, 48)
        assert gen.own_graphs is (graphs == "step")
        for _ in range(2):
            assert torch.equal(gen.generate(prompt, 20), want), graphs
            assert torch.equal(gen.generate(prompt, 20, temperature=0.7, seed=3), want_s), graphs
        if graphs == "step":
            assert set(gen._graphs) == {False, True}
