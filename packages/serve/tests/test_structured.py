"""Structured outputs in the engine: every output of a random model matches its JSON Schema (checked by jsonschema),
regular expression (re), choice or grammar, for byte-level BPE and byte-fallback vocabularies, sampled or greedy,
beside unconstrained requests that stay untouched."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from serve.engine import Engine
from serve.sampling import SamplingParams, StructuredOutput
from serve.structured import vocabulary
from specs.config import ServeConfig
from specs.errors import ConfigError, LmstackError

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["color", "ok", "n", "tags"],
          "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}}


def _run(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> list[tuple[str, list[int], str]]:
    """(text, token ids, finish reason) of each request."""
    outs: dict[str, list] = {}
    rids = [engine.submit(p, sp, on_output=lambda o: outs.setdefault(o.request_id, []).append(o))
            for p, sp in requests]
    engine.run_until_done()
    return [("".join(o.text for o in outs[r]), [t for o in outs[r] for t in o.token_ids], outs[r][-1].finish_reason)
            for r in rids]


@pytest.fixture(params=["bpe", "byte"])
def tok(request, tokenizer):
    if request.param == "bpe":
        return tokenizer
    from data.tokenizer import ByteTokenizer

    return ByteTokenizer()


def test_vocabulary_kinds(tokenizer):
    from data.tokenizer import ByteTokenizer

    assert vocabulary(tokenizer)[1] == "BYTE_LEVEL"  # the tests' BPE: GPT-2's byte-level alphabet
    spell, kind = vocabulary(ByteTokenizer())
    assert kind == "BYTE_FALLBACK" and spell[10] == "<0x0A>" and spell[256:] == ["", "", ""]


@pytest.mark.parametrize("whitespace", [True, False])
def test_json_schema_outputs_validate(tiny_lm, tok, whitespace):
    engine = Engine(tiny_lm, tok, ServeConfig(max_batch_size=6, block_size=8, num_blocks=256))
    so = StructuredOutput(json=json.dumps(SCHEMA), whitespace=whitespace)
    prompt = tok.encode("Reply in JSON:")
    reqs = [(prompt, SamplingParams(max_new_tokens=120, temperature=1.0, seed=s, structured=so)) for s in range(5)]
    reqs.append((prompt, SamplingParams(max_new_tokens=120, structured=so)))  # greedy
    for text, _, reason in _run(engine, reqs):
        if reason == "length":  # whitespace allowed anywhere: a random model may spend its budget on it
            assert whitespace and not text.strip().endswith("}")
            continue
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
        if not whitespace:
            assert "\n" not in text and "  " not in text


def test_regex_choice_and_grammar(tiny_lm, tok):
    engine = Engine(tiny_lm, tok, ServeConfig(max_batch_size=8, block_size=8, num_blocks=256))
    prompt = tok.encode("Answer:")
    kinds = [StructuredOutput(regex=r"[a-c]{3}-\d{2}"), StructuredOutput(choice=("yes", "no", "perhaps so")),
             StructuredOutput(grammar='root ::= "(" item ("," item)* ")"\nitem ::= [0-9] | "x"')]
    reqs = [(prompt, SamplingParams(max_new_tokens=60, temperature=1.0, seed=s, structured=k))
            for k in kinds for s in range(3)]
    results = _run(engine, reqs)
    assert sum(reason == "stop" for _, _, reason in results) >= 7  # a repeat may run out of tokens; most finish
    for (_, sp), (text, _, reason) in zip(reqs, results):
        if reason != "stop":
            continue
        k = sp.structured
        if k.regex:
            assert re.fullmatch(k.regex, text), text
        elif k.choice:
            assert text in k.choice
        else:
            assert re.fullmatch(r"\(([0-9]|x)(,([0-9]|x))*\)", text), text


def test_unconstrained_requests_are_untouched(tiny_lm, tokenizer):
    """A request without a grammar gets the same tokens whether constrained requests share its steps or not."""
    prompt = tokenizer.encode("The cat")
    plain = SamplingParams(max_new_tokens=12, ignore_eos=True)
    alone = _run(Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64)), [(prompt, plain)])
    so = StructuredOutput(choice=("alpha", "beta"))
    mixed = _run(Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64)),
                 [(prompt, SamplingParams(max_new_tokens=12, structured=so)), (prompt, plain)])
    assert mixed[1][1] == alone[0][1]
    assert mixed[0][0] in ("alpha", "beta") and mixed[0][2] == "stop"


def test_a_complete_output_ends_the_request_even_with_ignore_eos(tiny_lm, tokenizer):
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64))
    so = StructuredOutput(choice=("on", "off"))
    (text, ids, reason), = _run(engine, [(tokenizer.encode("x"), SamplingParams(max_new_tokens=30, ignore_eos=True,
                                                                                structured=so))])
    assert text in ("on", "off") and reason == "stop" and ids[-1] == tokenizer.eos_id


def test_logprobs_are_the_models_and_the_budget_can_end_a_prefix(tiny_lm, tokenizer):
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64))
    so = StructuredOutput(json=json.dumps(SCHEMA), whitespace=False)
    outs: list = []
    engine.submit(tokenizer.encode("x"), SamplingParams(max_new_tokens=3, logprobs=2, structured=so),
                  on_output=outs.append)
    engine.run_until_done()
    assert outs[-1].finish_reason == "length" and "".join(o.text for o in outs).startswith('{"')
    first = outs[0].logprobs[0]
    with torch.no_grad():
        logits = tiny_lm(torch.tensor([tokenizer.encode("x")]))[0, -1].float()
    want = torch.log_softmax(logits, -1)[first.token].item()  # unmasked: the model's own distribution
    assert first.logprob == pytest.approx(want, abs=1e-4)


def test_bad_specs_are_config_errors(tiny_lm, tokenizer):
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64))
    with pytest.raises(ConfigError, match="response_format: the JSON Schema does not compile"):
        engine.submit([1], SamplingParams(structured=StructuredOutput(json="{not json")), on_output=print)
    with pytest.raises(ConfigError, match="regular expression does not compile"):
        engine.submit([1], SamplingParams(structured=StructuredOutput(regex="(unclosed")), on_output=print)
    with pytest.raises(ConfigError, match="exactly one of json, regex, choice, grammar"):
        StructuredOutput(regex="a", choice=("b",))
    with pytest.raises(ConfigError, match="need the model's tokenizer"):
        Engine(tiny_lm, None, ServeConfig(block_size=8, num_blocks=64)).submit(
            [1], SamplingParams(structured=StructuredOutput(regex="a")), on_output=print)


def test_generate_and_generate_stream_are_constrained_too(tiny_lm, tokenizer):
    """The notebook path: generate()'s greedy constrained tokens equal the engine's; sampled rows validate."""
    from serve.generate import generate, generate_stream

    so = {"json": json.dumps(SCHEMA), "whitespace": False}
    prompt = tokenizer.encode("Reply in JSON:")
    res = generate(tiny_lm, [prompt], 120, tokenizer=tokenizer, structured=so, return_dict=True)
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=128))
    (_, ids, reason), = _run(engine, [(prompt, SamplingParams(max_new_tokens=120, structured=StructuredOutput(**so)))])
    assert res.tokens[0] == ids and res.finish_reasons[0] == reason == "stop"
    res = generate(tiny_lm, [prompt] * 3, 120, tokenizer=tokenizer, structured=so, temperature=1.0, seed=3,
                   return_dict=True)
    for text, reason in zip(res.texts, res.finish_reasons):
        assert reason == "stop"
        jsonschema.validate(json.loads(text), SCHEMA)
    text = "".join(d for _, d in generate_stream(tiny_lm, [prompt], 30, tokenizer=tokenizer, ignore_eos=True,
                                                 structured={"choice": ["north", "south"]}))
    assert text in ("north", "south")
    with pytest.raises(ConfigError, match="not with beam search"):
        generate(tiny_lm, [prompt], 5, tokenizer=tokenizer, num_beams=2, structured=so)
    with pytest.raises(ConfigError, match="need tokenizer="):
        generate(tiny_lm, [prompt], 5, structured=so)
    with pytest.raises(LmstackError, match="allows no further token"):  # no EOS to end a complete output with
        generate(tiny_lm, [prompt], 20, tokenizer=tokenizer, eos_token_id=[], structured={"choice": ["ok"]})


def test_a_grammar_with_no_way_to_end_fails_its_request_alone(tiny_lm, tokenizer):
    """No end-of-sequence token (eos_ids=()): a complete output leaves nothing to sample, so that request ends in
    an error naming why, and the request beside it runs on to its length."""
    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=64), eos_ids=())
    outs: dict[str, list] = {}
    sink = lambda o: outs.setdefault(o.request_id, []).append(o)
    engine.submit([1, 2], SamplingParams(max_new_tokens=40, structured=StructuredOutput(choice=("ok",))),
                  on_output=sink, request_id="c")
    engine.submit([1, 2], SamplingParams(max_new_tokens=10, ignore_eos=True), on_output=sink, request_id="p")
    engine.run_until_done()
    assert outs["c"][-1].finish_reason == "error" and "allows no further token" in str(outs["c"][-1].error)
    assert "".join(o.text for o in outs["c"]) == "ok"
    assert outs["p"][-1].finish_reason == "length" and sum(len(o.token_ids) for o in outs["p"]) == 10
