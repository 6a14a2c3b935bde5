"""Prefill runs the LM head on the last position alone where the model takes transformers' ``logits_to_keep``
(TransformerLM does), and every decode path gives the tokens it gives with a model that does not take it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.lm import TransformerLM
from serve.decoder import keeps_logits, last_logits
from serve.engine import Engine
from serve.generate import generate, generate_stream
from serve.sampling import SamplingParams
from specs.config import ServeConfig
from specs.presets import preset


class Recording(TransformerLM):
    """TransformerLM noting each forward's ``logits_to_keep`` and the logits' shape."""

    def forward(self, input_ids, positions=None, cache=None, attn_mask=None, document_ids=None, logits_to_keep=0):
        out = super().forward(input_ids, positions=positions, cache=cache, attn_mask=attn_mask,
                              document_ids=document_ids, logits_to_keep=logits_to_keep)
        self.calls.append((logits_to_keep, tuple(out.shape)))
        return out


class Plain(nn.Module):
    """The same model behind the Protocol's forward, without ``logits_to_keep`` (a plugin model's)."""

    def __init__(self, inner: TransformerLM):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, positions=None, cache=None, attn_mask=None, document_ids=None):
        return self.inner(input_ids, positions=positions, cache=cache, attn_mask=attn_mask, document_ids=document_ids)

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = Recording(preset("llama-debug", vocab_size=300, init_std=0.2)).eval()
    model.calls = []
    return model, Plain(model)


def test_which_models_keep_logits(pair):
    model, plain = pair
    assert keeps_logits(model) and keeps_logits(TransformerLM(preset("llama-debug"))) and not keeps_logits(plain)
    assert not keeps_logits(object()) and not keeps_logits(lambda ids: ids)
    ids = torch.randint(0, 300, (2, 6))
    model.calls.clear()
    got = last_logits(model, ids)
    assert model.calls == [(1, (2, 1, 300))]
    torch.testing.assert_close(got, model(ids)[:, -1].float())
    torch.testing.assert_close(last_logits(plain, ids), got)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam", "stream"])
def test_generate_keeps_the_last_logits_and_the_tokens(pair, mode):
    model, plain = pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]] if mode != "stream" else [[5, 6, 7, 8, 9, 10, 11]]
    kw = {"greedy": {}, "sample": {"temperature": 0.9, "seed": 3}, "beam": {"num_beams": 2}, "stream": {}}[mode]
    outs = []
    for m in (model, plain):
        model.calls.clear()
        if mode == "stream":
            outs.append([t for t, _ in generate_stream(m, prompts[0], 6)])
        else:
            outs.append(generate(m, prompts, max_new_tokens=6, ignore_eos=True, **kw).tolist())
        first = model.calls[0]
        rows = len(prompts) * kw.get("num_beams", 1)
        if m is model:  # the prefill's LM head on the last position only
            assert first == (1, (rows, 1, 300)), first
        else:
            assert first == (0, (rows, 7, 300)), first
    assert outs[0] == outs[1]


def test_prompt_logprobs_still_get_every_position(pair):
    model, plain = pair
    got = []
    for m in (model, plain):
        model.calls.clear()
        out = generate(m, [[5, 6, 7, 8]], max_new_tokens=2, prompt_logprobs=1, return_dict=True)
        assert model.calls[0] == (0, (1, 4, 300))
        got.append((out.sequences.tolist(), out.prompt_logprobs))
    assert got[0] == got[1]


def test_the_engine_prefills_the_last_position_unless_prompt_logprobs_are_asked(pair):
    model, plain = pair
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36]]
    params = [SamplingParams(max_new_tokens=4), SamplingParams(max_new_tokens=3, prompt_logprobs=2),
              SamplingParams(max_new_tokens=5, temperature=0.8, seed=1)]
    results = []
    for m in (model, plain):
        model.calls.clear()
        engine = Engine(m, None, ServeConfig(max_batch_size=4, block_size=4, num_blocks=32))
        outs = {}
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.submit(p, sp, on_output=lambda o, i=i, outs=outs: outs.setdefault(i, []).append(o),
                          request_id=f"r{i}")
        engine.run_until_done()
        results.append({i: ([t for o in v for t in o.token_ids], v[0].prompt_logprobs) for i, v in outs.items()})
        prefills = [c for c in model.calls if c[1][1] > 1 or c[0] == 1]
        if m is model:  # the three prompts have different lengths: three prefills, one with every position
            assert sorted(prefills) == [(0, (1, 3, 300)), (1, (1, 1, 300)), (1, (1, 1, 300))], model.calls
    assert results[0] == results[1]
    assert results[0][1][1] is not None and len(results[0][1][1]) == 3
