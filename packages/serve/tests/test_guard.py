"""Guardrails on the server (``--guard``, an ``lmstack.guards`` plugin): prompts and messages are checked before
the model sees them, every choice's text passes through its own output guard, streaming or not, and a choice the
guard stops ends with ``finish_reason: content_filter``."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import live_server

from serve.engine import Engine
from serve.generate import generate
from serve.guarding import load_guard
from serve.server import build_app
from specs.config import ServeConfig
from specs.errors import ConfigError
from specs.protocols import TextGuard

LIMIT = 5  # characters a response may have before the fake guard stops it


class _Output:
    """Upper-cases what passes (so a test sees every character went through it) and stops after LIMIT."""

    def __init__(self):
        self.n, self.blocked, self.message = 0, False, ""

    def feed(self, delta: str) -> str:
        if self.blocked:
            return ""
        out = delta[:LIMIT - self.n]
        self.n += len(out)
        if len(out) < len(delta):
            self.blocked, self.message = True, "too long"
        return out.upper()

    def finish(self) -> str:
        return ""


class _Guard:
    name = "fake"

    def check_input(self, text: str) -> tuple[bool, str, str]:
        if "forbidden" in text:
            return False, text, "no forbidden words here"
        return True, text.replace("secret", "[X]"), ""

    def output(self) -> _Output:
        return _Output()


@pytest.fixture(scope="module")
def guarded(tiny_lm, tokenizer):
    """(base URL, model, tokenizer) of a live server guarded by _Guard."""
    engine = Engine(tiny_lm, tokenizer, ServeConfig(max_batch_size=4, block_size=8, num_blocks=64))
    with live_server(build_app(engine, tokenizer, model_name="tiny", guard=_Guard())) as url:
        yield url, tiny_lm, tokenizer


def _greedy(model, tok, ids, n):
    return generate(model, [ids], max_new_tokens=n, tokenizer=tok, return_dict=True).texts[0]


def _events(resp: httpx.Response) -> list[dict]:
    lines = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_inputs_are_checked_before_the_model(guarded):
    url, _, _ = guarded
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "the secret plan", "max_tokens": 1,
                                                  "echo": True, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("the [X] plan")  # what the model saw
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": ["ok", "a forbidden one"]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "content_policy_violation" and err["param"] == "prompt[1]"
    assert err["message"] == "no forbidden words here"
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text",
                                                                              "text": "forbidden"}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].content"


def test_token_prompts_are_checked_as_text(guarded):
    url, _, tok = guarded
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": tok.encode("forbidden fruit")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"


@pytest.mark.parametrize("stream", [False, True])
def test_completions_pass_through_the_output_guard(guarded, stream):
    url, model, tok = guarded
    prompt = "def f(x):"
    want = _greedy(model, tok, tok.encode(prompt), 16)
    assert len(want) > LIMIT
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": stream}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    if stream:
        events = _events(r)
        text = "".join(e["choices"][0]["text"] for e in events)
        reasons = [e["choices"][0]["finish_reason"] for e in events]
        assert reasons[-1] == "content_filter" and reasons.count("content_filter") == 1
    else:
        choice = r.json()["choices"][0]
        text = choice["text"]
        assert choice["finish_reason"] == "content_filter"
    assert text == want[:LIMIT].upper()


def test_chat_choices_are_guarded_apart(guarded):
    url, _, _ = guarded
    body = {"model": "tiny", "messages": [{"role": "user", "content": "say something long"}], "max_tokens": 16,
            "n": 2, "temperature": 1.0, "seed": 0, "stream": True}
    events = _events(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60))
    for i in range(2):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert len(text) <= LIMIT and text == text.upper()
        ends = [c["finish_reason"] for c in mine if c["finish_reason"]]
        assert len(ends) == 1 and ends[0] in ("content_filter", "stop", "length")
    plain = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=60).json()
    assert all(len(c["message"]["content"]) <= LIMIT for c in plain["choices"])


def test_load_guard_names_plugins():
    guard = load_guard("policy:builtin:pii")  # lmstack-safety's plugin (a test dependency)
    assert isinstance(guard, TextGuard) and guard.name == "policy:builtin:pii"
    allowed, text, _ = guard.check_input("mail me at jane@example.com")
    assert allowed and text == "mail me at [REDACTED:EMAIL]"
    assert load_guard(None) is None
    with pytest.raises(ConfigError, match=r"serve.guard: .*unknown guards 'polcy'.*did you mean 'policy'"):
        load_guard("polcy:builtin:pii")
    with pytest.raises(ConfigError, match="serve.guard: 'policy:builtin:nope'"):
        load_guard("policy:builtin:nope")
