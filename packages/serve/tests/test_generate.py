"""generate(): parity with transformers' generate (greedy, left padding, sampling, beam search), stop rules,
streaming, logprobs and the instrumented loop."""

from __future__ import annotations

import math

import pytest
import torch

from serve.generate import generate, generate_instrumented, generate_stream
from specs.errors import ConfigError


def _hf_generate(hf, ids, mask=None, **kw):
    mask = torch.ones_like(ids) if mask is None else mask
    kw.setdefault("pad_token_id", 0)
    return hf.generate(ids, attention_mask=mask, **kw)


@pytest.mark.parametrize("pair", ["llama_pair", "gpt2_pair"])
def test_greedy_equals_transformers(pair, request):
    """Done-when: greedy on a model imported from transformers equals transformers' greedy, token for token."""
    hf, lm, _ = request.getfixturevalue(pair)
    torch.manual_seed(3)
    ids = torch.randint(3, 300, (3, 9))
    ref = _hf_generate(hf, ids, max_new_tokens=24, do_sample=False)
    out = generate(lm, ids, max_new_tokens=24)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    assert len(set(out[0, 9:].tolist())) > 1  # not a degenerate constant sequence


def test_left_padded_batch_equals_transformers(llama_pair):
    hf, lm, _ = llama_pair
    torch.manual_seed(4)
    ids = torch.randint(3, 300, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, 0)
    ref = _hf_generate(hf, ids, mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(generate(lm, ids, attn_mask=mask, max_new_tokens=12), ref)
    # The same prompts as ragged lists give the same rows.
    lists = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    assert torch.equal(generate(lm, lists, max_new_tokens=12, pad_token_id=0), ref)


def test_eos_stops_rows_and_pads(llama_pair):
    hf, lm, _ = llama_pair
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(5))
    free = generate(lm, ids, max_new_tokens=16)
    eos = int(free[0, 6 + 3])  # the 4th token row 0 produces becomes EOS
    ref = _hf_generate(hf, ids, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=7)
    res = generate(lm, ids, max_new_tokens=16, eos_token_id=eos, pad_token_id=7, return_dict=True)
    assert torch.equal(res.sequences, ref[:, : res.sequences.shape[1]])
    assert res.finish_reasons[0] == "stop" and res.tokens[0][-1] == eos and len(res.tokens[0]) == 4


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(temperature=1.3, top_k=20),
                                dict(temperature=1.0, top_p=0.8), dict(temperature=0.9, min_p=0.1),
                                dict(temperature=1.0, repetition_penalty=1.3)])
def test_sampling_equals_transformers_with_same_rng(llama_pair, kw):
    """With the global RNG seeded identically, our processors + multinomial draw the tokens transformers draws."""
    hf, lm, _ = llama_pair
    ids = torch.randint(3, 300, (2, 8), generator=torch.Generator().manual_seed(6))
    torch.manual_seed(123)
    ref = _hf_generate(hf, ids, max_new_tokens=16, do_sample=True, top_k=kw.get("top_k", 0), **{
        k: v for k, v in kw.items() if k != "top_k"})
    torch.manual_seed(123)
    out = generate(lm, ids, max_new_tokens=16, **kw)
    assert torch.equal(out, ref)


def test_seeded_sampling_is_reproducible_and_varies(tiny_lm):
    ids = torch.tensor([[5, 6, 7, 8]])
    a = generate(tiny_lm, ids, max_new_tokens=20, temperature=1.0, seed=11)
    b = generate(tiny_lm, ids, max_new_tokens=20, temperature=1.0, seed=11)
    c = generate(tiny_lm, ids, max_new_tokens=20, temperature=1.0, seed=12)
    g = torch.Generator().manual_seed(11)
    d = generate(tiny_lm, ids, max_new_tokens=20, temperature=1.0, generator=g)
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.equal(a, c)


def test_presence_and_frequency_penalties_reduce_repeats(tiny_lm):
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = generate(tiny_lm, ids, max_new_tokens=40, return_dict=True).tokens[0]
    pen = generate(tiny_lm, ids, max_new_tokens=40, frequency_penalty=2.0, presence_penalty=2.0,
                   return_dict=True).tokens[0]
    assert len(set(pen)) > len(set(plain))


@pytest.mark.parametrize("kw", [dict(length_penalty=1.0, early_stopping=False),
                                dict(length_penalty=2.0, early_stopping=True),
                                dict(length_penalty=-0.5, early_stopping="never"),
                                dict(length_penalty=1.0, early_stopping="never")])
def test_beam_search_equals_transformers(llama_pair, kw):
    hf, lm, _ = llama_pair
    ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(7))
    greedy = generate(lm, ids, max_new_tokens=12)
    eos = int(greedy[1, 7 + 2])  # an EOS that beams actually reach
    # pad 7, not 0: transformers fills finished beams with `pad_token_id or eos`, so a 0 pad would become EOS.
    ref = _hf_generate(hf, ids, max_new_tokens=12, num_beams=3, do_sample=False, eos_token_id=eos, pad_token_id=7,
                       **kw)
    res = generate(lm, ids, max_new_tokens=12, num_beams=3, eos_token_id=eos, pad_token_id=7, return_dict=True,
                   **kw)
    assert torch.equal(res.sequences, ref)


def test_beam_search_left_padded(llama_pair):
    hf, lm, _ = llama_pair
    ids = torch.randint(3, 300, (2, 8), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ref = _hf_generate(hf, ids, mask, max_new_tokens=8, num_beams=4, do_sample=False)
    assert torch.equal(generate(lm, ids, attn_mask=mask, max_new_tokens=8, num_beams=4), ref)


def test_stop_strings_streaming_and_text(tiny_lm, tokenizer):
    ids = tokenizer.encode("The quick brown")
    full = generate(tiny_lm, [ids], max_new_tokens=30, tokenizer=tokenizer, return_dict=True)
    text = full.texts[0]
    assert text == tokenizer.decode(full.tokens[0])
    stop = text[5:8]
    assert stop and stop not in text[:5 + len(stop) - 1]
    cut = generate(tiny_lm, [ids], max_new_tokens=30, tokenizer=tokenizer, stop=[stop], return_dict=True)
    assert cut.texts[0] == text[: text.index(stop)] and cut.finish_reasons == ["stop"]
    streamed = list(generate_stream(tiny_lm, ids, max_new_tokens=30, tokenizer=tokenizer, stop=[stop]))
    assert "".join(d for _, d in streamed) == cut.texts[0]
    assert [t for t, _ in streamed] == cut.tokens[0]
    # stop token ids end the row and keep the token
    tok3 = full.tokens[0][3]
    by_id = generate(tiny_lm, [ids], max_new_tokens=30, tokenizer=tokenizer, stop_token_ids=[tok3], return_dict=True)
    assert by_id.tokens[0] == full.tokens[0][: full.tokens[0].index(tok3) + 1]
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(tiny_lm, [ids], max_new_tokens=3, stop=["x"])


def test_logprobs_match_teacher_forcing(tiny_lm):
    ids = torch.tensor([[9, 8, 7, 6, 5]])
    res = generate(tiny_lm, ids, max_new_tokens=6, temperature=1.0, seed=3, logprobs=3, prompt_logprobs=2,
                   return_dict=True)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(res.sequences).float(), -1)[0]  # (T + N, V)
    seq = res.sequences[0].tolist()
    for i, lp in enumerate(res.logprobs[0]):
        pos = 5 + i - 1
        assert lp.token == seq[pos + 1]
        assert math.isclose(lp.logprob, float(logp[pos, lp.token]), abs_tol=1e-4)
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        assert math.isclose(lp.top[0][1], float(logp[pos].max()), abs_tol=1e-4)
    plp = res.prompt_logprobs[0]
    assert plp[0] is None and len(plp) == 5
    for t in range(1, 5):
        assert math.isclose(plp[t].logprob, float(logp[t - 1, seq[t]]), abs_tol=1e-4) and len(plp[t].top) == 2


def test_unknown_keyword_and_bad_values_fail_clearly(tiny_lm):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ConfigError, match="temprature.*did you mean 'temperature'"):
        generate(tiny_lm, ids, temprature=0.5)
    with pytest.raises(ConfigError, match="top_p"):
        generate(tiny_lm, ids, top_p=1.5)
    with pytest.raises(ConfigError, match="max_seq_len"):
        generate(tiny_lm, torch.ones(1, 256, dtype=torch.long))


@pytest.mark.parametrize("call, path, message", [
    (lambda m: generate(m, [[1, 2]], 3, num_beams=0), "num_beams", "must be >= 1"),
    (lambda m: generate(m, [[1, 2]], 3, num_beams=-2), "num_beams", "got -2"),
    (lambda m: generate(m, torch.tensor([[1.7, 2.2]]), 3), "input_ids", "expected integer token ids"),
    (lambda m: generate(m, [[1, 2], [3.5]], 3), r"input_ids\[1\]", "expected integer token ids"),
    (lambda m: generate(m, [[1, 2]], 3, eos_token_id=300), "eos_token_id", r"token id 300 is outside .*\[0, 300\)"),
    (lambda m: generate(m, [[1, 2]], 3, eos_token_id=[5, -1]), "eos_token_id", "token id -1 is outside"),
    (lambda m: generate(m, [[1, 2]], 3, pad_token_id=512), "pad_token_id", "token id 512 is outside"),
    (lambda m: generate(m, [[1, 2]], 3, stop_token_ids=(400,)), "stop_token_ids", "token id 400 is outside"),
    (lambda m: generate(m, torch.tensor([[1, 300]]), 3), "input_ids", "token id 300 is outside the vocabulary"),
    (lambda m: generate(m, [[1, -2], [4]], 3), "input_ids", "token id -2 is outside the vocabulary"),
    (lambda m: list(generate_stream(m, [5, 999], 3)), "input_ids", "token id 999 is outside"),
    (lambda m: list(generate_stream(m, [5], 3, eos_token_id=300)), "eos_token_id", "outside the vocabulary"),
    (lambda m: generate(m, torch.ones(1, 300, dtype=torch.long), 0), "input_ids", "more than the model's max_seq_len"),
    (lambda m: generate(m, torch.ones(1, 256, dtype=torch.long), 3, num_beams=2), "input_ids", "no room is left"),
    (lambda m: list(generate_stream(m, torch.ones(256, dtype=torch.long), 3)), "input_ids", "no room is left"),
    (lambda m: generate(m, "Once upon a time", 3), "input_ids", "got text; expected token ids"),
    (lambda m: generate(m, ["Once", "upon"], 3), "input_ids", "encode the text with the tokenizer first"),
])
def test_bad_ids_and_beams_are_refused_up_front(tiny_lm, call, path, message):
    with pytest.raises(ConfigError, match=f"^{path}: .*{message}"):
        call(tiny_lm)


def test_running_past_max_seq_len_warns_and_stops_with_length(tiny_lm, caplog):
    ids = torch.ones(1, 250, dtype=torch.long)
    with caplog.at_level("WARNING", logger="serve.generate"):
        res = generate(tiny_lm, ids, max_new_tokens=10, return_dict=True)
    assert len(res.tokens[0]) == 7 and res.finish_reasons == ["length"]  # 256 - 250 fed + the last, sampled one
    (rec,) = [r for r in caplog.records if r.name == "serve.generate"]
    assert "max_new_tokens is 10" in rec.getMessage() and "at most 7 new tokens fit" in rec.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="serve.generate"):
        beams = generate(tiny_lm, ids, max_new_tokens=10, num_beams=2, return_dict=True)
        generate(tiny_lm, ids, max_new_tokens=7)  # fits: no warning
    assert len(beams.tokens[0]) == 6
    (rec,) = caplog.records  # beam search keeps prompt + new tokens <= max_seq_len, as transformers does
    assert "at most 6 new tokens fit" in rec.getMessage()


class _Recorder:
    def __init__(self):
        self.scalars, self.texts = [], []

    def log_scalars(self, step, values):
        self.scalars.append((step, dict(values)))

    def log_text(self, step, tag, text):
        self.texts.append((step, tag, text))


def test_generate_instrumented_logs_latency_and_occupancy(tiny_lm):
    viz = _Recorder()
    ids = torch.tensor([[5, 6, 7]])
    out = generate_instrumented(tiny_lm, ids, viz=viz, max_new_tokens=10, step=42)
    assert torch.equal(out, generate(tiny_lm, ids, max_new_tokens=10))
    (step, m), = viz.scalars
    assert step == 42 and m["serve/new_tokens"] == 10
    assert m["serve/ttft_ms"] > 0 and m["serve/itl_ms_p50"] > 0 and m["serve/tokens_per_s"] > 0
    assert m["serve/itl_ms_p50"] <= m["serve/itl_ms_p99"] <= m["serve/itl_ms_max"]
    assert m["serve/cache_occupancy"] == pytest.approx(12 / 13)  # 3 prompt + 9 fed tokens of 13 slots
    assert viz.texts[0][1] == "serve/token_latency_ms"


def test_generate_instrumented_with_viz_session(tiny_lm, tmp_path):
    from specs.config import VizConfig
    from viz.session import VizSession

    session = VizSession(VizConfig(backend=("jsonl",)), run_dir=tmp_path, rank=0)
    generate_instrumented(tiny_lm, torch.tensor([[5, 6, 7]]), viz=session, max_new_tokens=4, step=1)
    session.close()
    assert any("ttft_ms" in p.read_text() for p in tmp_path.rglob("*.jsonl"))
