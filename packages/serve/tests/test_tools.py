"""Tool calling: the hermes parser, the plans for each tool_choice, the template's tools, and calls made through
the official openai client on a live server (named and required calls constrained; auto read by the parser)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import live_server

from serve.engine import Engine
from serve.http_errors import APIError
from serve.server import build_app
from serve.tokens import PromptEncoder
from serve.tools import AutoStream, parse_hermes, plan, tool_parser
from specs.config import ServeConfig
from specs.errors import PluginError

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}, "unit": {"enum": ["C", "F"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"enum": ["UTC", "CET"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def test_hermes_parser():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n'
            '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>')
    content, calls = parse_hermes(text)
    assert content == "Let me check."
    assert [(n, json.loads(a)) for n, a in calls] == [("get_weather", {"city": "Oslo", "unit": "C"}),
                                                      ("get_time", {"zone": "UTC"})]
    assert parse_hermes("no calls here") == ("no calls here", [])
    assert parse_hermes("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    content, calls = parse_hermes('<tool_call>{"name": "f", "arguments": {"x": 1}}')  # cut before the closing tag
    assert content is None and calls == [("f", '{"x": 1}')]
    assert parse_hermes('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>')[1] == [("f", '{"x": 2}')]
    with pytest.raises(PluginError, match="unknown tool-call parser 'herms'; valid: hermes"):
        tool_parser("herms")


def test_auto_stream_sends_content_until_a_call_begins():
    block = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    text = "Let me look. " + block + " Done."
    for cut in (1, 3, 7, 11):  # deltas of every size, the marker split across them
        s = AutoStream(parse_hermes, "<tool_call>")
        sent = "".join(s.feed(text[k:k + cut]) for k in range(0, len(text), cut))
        assert sent == "Let me look. "
        assert s.finish() == ("Done.", [("f", '{"x": 1}')])
    s = AutoStream(parse_hermes, "<tool_call>")
    assert s.feed("a <tool") == "a " and s.feed("box>") == "<toolbox>"  # a held-back tail that was no marker
    assert s.finish() == (None, [])
    s = AutoStream(parse_hermes, "<tool_call>")
    assert s.feed("plain <tool_c") == "plain " and s.finish() == ("<tool_c", [])


def test_plans_and_their_refusals():
    assert plan(None, None, None, None).mode == "none" and not plan(TOOLS, "none", None, None).active
    named = plan(TOOLS, {"type": "function", "function": {"name": "get_time"}}, None, None)
    assert named.mode == "named" and json.loads(named.structured.json) == TIME
    msg, called = named.message('{"zone": "CET"}')
    assert called and msg["content"] is None and msg["tool_calls"][0]["function"] == {
        "name": "get_time", "arguments": '{"zone": "CET"}'}
    assert named.finish_reason("stop", called) == "stop"  # a forced call: OpenAI's finish_reason
    req = plan(TOOLS, "required", False, None)
    array = json.loads(req.structured.json)
    assert array["maxItems"] == 1 and len(array["items"]["anyOf"]) == 2
    msg, called = req.message('[{"name": "get_weather", "parameters": {"city": "Lima", "unit": "F"}}]')
    assert called and req.finish_reason("stop", called) == "tool_calls"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Lima", "unit": "F"}
    assert req.message('[{"name": "get_wea')[1] is False  # cut by max_tokens: no call, the text as content
    for args, param, text in ((TOOLS, "tool_choice", '"auto" tool choice needs a tool-call parser'),
                              (None, "tool_choice", "tool_choice needs tools"),
                              (TOOLS + TOOLS[:1], "tools", "distinct function names")):
        with pytest.raises(APIError, match=text) as exc:
            plan(args, "auto" if args is TOOLS else "required", None, None)
        assert exc.value.param == param
    with pytest.raises(APIError, match="names 'nope', which is not among the tools"):
        plan(TOOLS, {"type": "function", "function": {"name": "nope"}}, None, None)


def test_the_template_sees_the_tools():
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer(chat_template="{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
                                      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    enc = PromptEncoder(tok)
    text = tok.decode(enc.chat([{"role": "user", "content": "hi"}], tools=TOOLS))
    assert text.startswith('TOOLS [{"type": "function", "function": {"name": "get_weather"') and "user: hi" in text
    assert tok.decode(enc.chat([{"role": "user", "content": "hi"}])) == "user: hi\n"


@pytest.fixture(scope="module")
def client(tiny_lm, tokenizer):
    engine = Engine(tiny_lm, tokenizer, ServeConfig(max_batch_size=8, block_size=8, num_blocks=256))
    with live_server(build_app(engine, tokenizer, model_name="tiny", tool_parser="hermes")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_named_and_required_calls_through_the_openai_client(client):
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=60, seed=seed,
                                           temperature=1.0,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content is None
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=80, temperature=1.0, seed=seed)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
        jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMAS[calls[0].function.name])


def test_streamed_calls_accumulate_like_openais(client):
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, stream=True, max_tokens=80,
                                            tool_choice={"type": "function", "function": {"name": "get_time"}})
    name, args, reasons = "", "", []
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                assert tc.index == 0
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            reasons.append(c.finish_reason)
    assert name == "get_time" and reasons[-1] == "stop"
    jsonschema.validate(json.loads(args), TIME)


def test_auto_reads_the_models_own_calls(client):
    """auto with the hermes parser: the output is forced (structured_outputs' one choice) to a Hermes block, so
    the parser's path runs end to end; without a block the text stays content."""
    block = '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima", "unit": "C"}}</tool_call>'
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=200,
                                       extra_body={"structured_outputs": {"choice": [block]}})
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Lima", "unit": "C"}
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=20,
                                       extra_body={"structured_outputs": {"choice": ["Sunny."]}})
    assert r.choices[0].message.content == "Sunny." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    said = "Checking Lima now. "
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True,
                                            extra_body={"structured_outputs": {"choice": [said + block]}})
    contents, calls, reasons = [], [], []
    for ch in stream:
        for c in ch.choices:
            contents += [c.delta.content] if c.delta.content else []
            calls += c.delta.tool_calls or []
            reasons.append(c.finish_reason)
    assert "".join(contents) == said and len(contents) > 3  # streamed as it came, not at the end
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")] and reasons[-1] == "tool_calls"
    with pytest.raises(openai.BadRequestError, match="constrains the output itself"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                       response_format={"type": "json_object"})


def test_a_tool_policy_guards_the_calls(tiny_lm, tokenizer, tmp_path):
    """lmstack-safety's tool rules through --guard: a call outside the allow list ends as content_filter with no
    call, streaming or not; an allowed call passes."""
    import yaml

    from safety.serving import PolicyGuard

    policy = tmp_path / "agent.yaml"
    policy.write_text(yaml.safe_dump({"schema_version": 1, "name": "agent", "rules": [
        {"id": "weather-only", "stages": ["tool"], "detector": {"type": "tools", "allow": ["get_weather"]},
         "action": "block", "message": "only get_weather may be called"}]}))
    engine = Engine(tiny_lm, tokenizer, ServeConfig(max_batch_size=4, block_size=8, num_blocks=128))
    app = build_app(engine, tokenizer, model_name="tiny", guard=PolicyGuard(str(policy)))
    with live_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        named = {"type": "function", "function": {"name": "get_time"}}
        r = c.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=named, max_tokens=60)
        assert r.choices[0].finish_reason == "content_filter" and not r.choices[0].message.tool_calls
        chunks = list(c.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=named,
                                                max_tokens=60, stream=True))
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "content_filter"
        assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
        r = c.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=60,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
