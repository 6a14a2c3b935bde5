"""The OpenAI-compatible server on a real uvicorn socket: the official openai client (streaming included), httpx
for the error cases, Prometheus metrics, the tokenizer endpoints and disconnect handling."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from conftest import live_server

from serve.engine import Engine
from serve.generate import generate
from serve.loading import load_model, load_tokenizer
from serve.server import build_app
from specs.config import ServeConfig

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_lm, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    tiny_lm.save_pretrained(root / "tiny")
    tokenizer.save(root / "tok")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "tiny" / f.name)
    return root / "tiny"


@pytest.fixture(scope="module")
def server(checkpoint):
    """(base URL, engine, model, tokenizer) of a live server with an API key, loaded through the resolver."""
    model = load_model(checkpoint, device="cpu", dtype="fp32")
    tok = load_tokenizer(checkpoint)
    engine = Engine(model, tok, ServeConfig(max_batch_size=8, block_size=8, num_blocks=128))
    with live_server(build_app(engine, tok, model_name="tiny", api_key=KEY)) as url:
        yield url, engine, model, tok
    assert not engine.is_running()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _ref_text(model, tok, ids, n, **kw):
    return generate(model, [ids], max_new_tokens=n, tokenizer=tok, return_dict=True, **kw)


def test_models_and_greedy_completion(server, client):
    _, _, model, tok = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    r = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0)
    ref = _ref_text(model, tok, tok.encode("The quick brown"), 12)
    assert r.choices[0].text == ref.texts[0] and r.choices[0].finish_reason == ref.finish_reasons[0]
    assert r.usage.prompt_tokens == len(tok.encode("The quick brown"))
    assert r.usage.completion_tokens == len(ref.tokens[0])


def test_echo_prompt_logprobs_from_token_ids(server, client):
    _, _, model, tok = server
    ids = tok.encode("Serving language models")
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=3, temperature=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    seq = torch.tensor([ids + _ref_text(model, tok, ids, 3).tokens[0]])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq).float(), -1)[0]
    for t in range(1, seq.shape[1]):
        assert math.isclose(lp.token_logprobs[t], float(logp[t - 1, seq[0, t]]), abs_tol=1e-4)
        assert math.isclose(max(lp.top_logprobs[t].values()), float(logp[t - 1].max()), abs_tol=1e-4)
    assert r.choices[0].text.startswith(tok.decode(ids))


def test_n_seed_and_stop(server, client):
    a = client.completions.create(model="tiny", prompt="The", max_tokens=8, temperature=1.0, n=2, seed=7)
    b = client.completions.create(model="tiny", prompt="The", max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1] and a.usage.completion_tokens == 16
    full = client.completions.create(model="tiny", prompt="The", max_tokens=16, temperature=0).choices[0].text
    stop = full[3:5]
    cut = client.completions.create(model="tiny", prompt="The", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_streaming_completion_and_usage(server, client):
    whole = client.completions.create(model="tiny", prompt="lazy dog", max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="lazy dog", max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_chat_completion_and_streaming(server, client):
    _, _, model, tok = server
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello fox"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=9, temperature=0, logprobs=True,
                                       top_logprobs=2)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ref = _ref_text(model, tok, ids, 9)
    assert r.choices[0].message.content == ref.texts[0] and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids)
    assert len(r.choices[0].logprobs.content) == len(ref.tokens[0])
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.texts[0]
    assert chunks[-1].usage.total_tokens == len(ids) + len(ref.tokens[0])
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_concurrent_clients_share_the_engine(server, client):
    _, _, model, tok = server
    prompts = ["The quick", "brown fox", "Naïve café", "東京 ✓", "decoding tokens", "memory early"]

    def ask(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0).choices[0].text

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, prompts))
    assert got == [_ref_text(model, tok, tok.encode(p), 10).texts[0] for p in prompts]


def test_tokenizer_endpoints(http, server):
    tok = server[3]
    r = http.post("/tokenize", json={"prompt": "The quick<|eos|>", "add_special_tokens": False}).json()
    assert r["tokens"] == tok.encode("The quick") + [tok.eos_id] and r["count"] == len(r["tokens"])
    assert http.post("/detokenize", json={"tokens": tok.encode("brown fox")}).json() == {"prompt": "brown fox"}
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|eos|>" and "im_start" in info["chat_template"]


def test_health_and_prometheus_metrics(server):
    base = server[0]
    assert httpx.get(base + "/health").json() == {"status": "ok"}  # no key needed
    text = httpx.get(base + "/metrics").text
    for name in ("lmstack:generation_tokens_total", "lmstack:kv_cache_usage_perc",
                 "lmstack:time_to_first_token_seconds_bucket", "lmstack:http_requests_total",
                 'lmstack:request_success_total{finished_reason="length",model_name="tiny"}'):
        assert name in text, name


def _err(resp, status, code=None, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def test_errors_are_openai_json_and_never_kill_the_server(server, http):
    base = server[0]
    _err(httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "x"}), 401, "invalid_api_key")
    _err(httpx.post(base + "/v1/completions", json={}, headers={"Authorization": "Bearer nope"}), 401)
    _err(http.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"}), 400,
         "invalid_json")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "temprature": 1}), 400,
         "unknown_parameter", "temprature")
    _err(http.post("/v1/completions", json={"prompt": "x"}), 400, "missing_required_parameter", "model")
    _err(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404, "model_not_found")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "temperature": 5}), 400, None,
         "temperature")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": -1}), 400, None,
         "max_tokens")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": [1] * 300}), 400, "context_length_exceeded")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1000}), 400,
         "context_length_exceeded")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": [5, 100000]}), 400, None, "prompt")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": [[]]}), 400, None, "prompt")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "seed": 2**70}), 400, None, "seed")
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), 400,
         None, "stop")
    _err(http.post("/v1/chat/completions", json={"model": "tiny", "messages": []}), 400, None, "messages")
    _err(http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}),
         400)
    _err(http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream_options": {}}), 400)
    _err(http.post("/v1/completions", json=["not", "an", "object"]), 400)
    _err(http.get("/v1/nothing"), 404)
    _err(http.get("/v1/completions"), 405)
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model="tiny", prompt="x", max_tokens=5000)


def test_busy_engine_answers_429(tiny_lm, tokenizer):
    from serve.sampling import SamplingParams

    engine = Engine(tiny_lm, tokenizer, ServeConfig(block_size=8, num_blocks=16), max_waiting=2)
    app = build_app(engine, tokenizer, model_name="tiny", max_body_bytes=1000)
    engine.submit([1, 2], SamplingParams(max_new_tokens=2), on_output=lambda out: None)  # never started: it waits

    async def go(**kw):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/completions", **kw)

    _err(asyncio.run(go(json={"model": "tiny", "prompt": "x", "max_tokens": 2, "n": 2})), 429, "rate_limit_exceeded")
    # More choices than the engine can ever queue is a 400 (a 429 is retried forever), refused before tokenizing.
    err = _err(asyncio.run(go(json={"model": "tiny", "prompt": "x", "n": 3})), 400, "invalid_value", "n")
    assert "at most 2 in one request" in err["message"]
    err = _err(asyncio.run(go(json={"model": "tiny", "prompt": ["x", "y", "z"]})), 400, "invalid_value", "prompt")
    assert "3 prompts x n=1 asks for 3 choices" in err["message"]
    # Bodies past max_body_bytes: 413 before parsing, with Content-Length or chunked.
    big = json.dumps({"model": "tiny", "prompt": [1] * 1000}).encode()
    err = _err(asyncio.run(go(content=big, headers={"Content-Type": "application/json"})), 413, "request_too_large")
    assert "limit of 1000 bytes" in err["message"]

    async def chunks():
        yield big

    _err(asyncio.run(go(content=chunks(), headers={"Content-Type": "application/json"})), 413, "request_too_large")


def test_malformed_bodies_get_400(server, http):
    raw = {"Content-Type": "application/json"}
    for body, param in (('{"model": "tiny", "prompt": "a\\ud800b"}', "prompt"),
                        ('{"model": "tiny\\udfff", "prompt": "a"}', "model"),
                        ('{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800"}]}',
                         "messages[0].content")):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        err = _err(http.post(path, content=body, headers=raw), 400, "invalid_value", param)
        assert "not valid Unicode" in err["message"] and "U+D" in err["message"]
    err = _err(http.post("/tokenize", content='{"prompt": "\\ud800"}', headers=raw), 400, None, "prompt")
    assert "lone surrogate" in err["message"]
    err = _err(http.post("/v1/completions", content="[" * 100000 + "]" * 100000, headers=raw), 400, "invalid_json")
    assert "nested too deeply" in err["message"]
    err = _err(http.post("/v1/completions", content='{"model": "tiny", "prompt": [' + "1" * 5000 + "]}",
                         headers=raw), 400, "invalid_json")
    assert "too many digits" in err["message"]
    assert http.get("/health").status_code == 200


def test_unsupported_and_cross_field_errors_name_the_field(server, http):
    def post(path, **body):
        return http.post(path, json={"model": "tiny", **body})

    chat = {"messages": [{"role": "user", "content": "hi"}]}
    err = _err(post("/v1/chat/completions", **chat, function_call="auto"), 400, "unsupported_parameter",
               "function_call")
    assert err["message"] == "function_call is not supported by this server"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    err = _err(post("/v1/chat/completions", **chat, tools=tools), 400, None, "tool_choice")  # auto, no parser
    assert '"auto" tool choice needs a tool-call parser' in err["message"]
    _err(post("/v1/completions", prompt="x", tools=tools), 400, "unknown_parameter", "tools")  # chat only
    err = _err(post("/v1/completions", prompt="x", response_format={"type": "json_schema"}), 400, None,
               "response_format")
    assert "needs a json_schema object" in err["message"]
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    err = _err(post("/v1/chat/completions", **chat, response_format=bad), 400, None, "response_format")
    assert err["message"] == 'the JSON Schema does not compile: Unsupported type "nonsense"'
    err = _err(post("/v1/completions", prompt="x", structured_outputs={"regex": "a", "choice": ["b"]}), 400, None,
               "structured_outputs")
    assert "exactly one of json, json_object, regex, choice, grammar" in err["message"]
    _err(post("/v1/completions", prompt="x", response_format={"type": "json_object"},
              structured_outputs={"regex": "a"}), 400, None, "structured_outputs")
    err = _err(post("/v1/completions", prompt="x", toolz=1), 400, "unknown_parameter", "toolz")
    assert "Unrecognized request argument" in err["message"]
    err = _err(post("/v1/chat/completions", messages=[{"role": "user"}]), 400, "missing_required_parameter",
               "messages[0].content")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]}, {"role": "user", "content": "go on"}]
    assert post("/v1/chat/completions", messages=turns, max_tokens=2).status_code == 200  # content may be omitted
    for part in ({"type": "image_url", "image_url": {"url": "http://x"}}, {"type": "text", "text": "a", "x": 1}):
        err = _err(post("/v1/chat/completions", messages=[{"role": "user", "content": [part]}]), 400, None,
                   "messages[0].content")
        assert 'only text parts ({"type": "text", "text": ...}) are supported' in err["message"]
    err = _err(post("/v1/completions", prompt=""), 400, None, "prompt")
    assert err["message"].startswith("prompt is empty; at least one token")
    err = _err(post("/v1/completions", prompt=["a", ""]), 400, None, "prompt")
    assert err["message"].startswith("prompt[1] is empty")
    err = _err(post("/v1/completions", prompt=[1] * 300), 400, "context_length_exceeded", "prompt")
    err = _err(post("/v1/chat/completions", messages=[{"role": "user", "content": "x" * 400}]), 400,
               "context_length_exceeded", "messages")
    for body, param in (({"prompt": "x", "best_of": 2}, "best_of"), ({"prompt": "x", "suffix": "y"}, "suffix"),
                        ({"prompt": "x", "stream_options": {}}, "stream_options")):
        _err(post("/v1/completions", **body), 400, None, param)
    _err(post("/v1/chat/completions", **chat, top_logprobs=2), 400, None, "top_logprobs")
    _err(http.post("/tokenize", json={}), 400, None, "prompt")
    err = _err(http.post("/tokenize", json={"prompt": "x", **chat}), 400, None, "messages")
    assert "exactly one of prompt or messages" in err["message"]


def test_disconnect_mid_request_aborts_its_choices(server, monkeypatch):
    engine = server[1]
    step = engine.step

    def slow_step():  # tokens keep arriving (every 20 ms) while the client is gone
        time.sleep(0.02)
        step()

    monkeypatch.setattr(engine, "step", slow_step)
    aborted = engine.stats.finished.get("abort", 0)
    body = {"model": "tiny", "prompt": "The quick", "max_tokens": 240, "n": 4, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.5 s; 240 steps take about 5 s
        httpx.post(server[0] + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.5)
    deadline = time.monotonic() + 3
    while (engine.running or engine.waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not engine.running and not engine.waiting
    assert engine.stats.finished.get("abort", 0) == aborted + 4
    assert 'finished_reason="abort"' in httpx.get(server[0] + "/metrics").text


def test_structured_outputs_through_the_openai_client(server, client):
    """The openai SDK's own parse() of a pydantic model's strict schema, vLLM's structured_outputs, json_object."""
    from typing import Literal

    from pydantic import BaseModel

    class Verdict(BaseModel):
        label: Literal["spam", "ham"]
        confident: bool

    for seed in range(3):
        r = client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "Classify: hi"}],
                                          response_format=Verdict, max_tokens=60, temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Verdict)
    r = client.completions.create(model="tiny", prompt="Code:", max_tokens=20, temperature=1.0, seed=1,
                                  extra_body={"structured_outputs": {"regex": "[A-Z]{2}-[0-9]{3}"}})
    assert r.choices[0].finish_reason == "stop" and re.fullmatch("[A-Z]{2}-[0-9]{3}", r.choices[0].text)
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Pick"}], stream=True,
                                            max_tokens=20, extra_body={"structured_outputs": {"choice": ["left",
                                                                                                         "right"]}})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) in ("left", "right")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "JSON please"}],
                                       response_format={"type": "json_object"}, max_tokens=80, temperature=0)
    text, reason = r.choices[0].message.content, r.choices[0].finish_reason
    assert text.lstrip().startswith("{") and (reason == "length" or isinstance(json.loads(text), dict))
