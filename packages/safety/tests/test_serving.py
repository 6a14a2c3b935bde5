"""The ``lmstack.guards`` plugin ``policy``: a policy as a server's guard (specs' TextGuard protocol)."""

from __future__ import annotations

import pytest

from safety import Guard
from safety.serving import PolicyGuard
from specs.plugins import resolve
from specs.protocols import OutputGuard, TextGuard

POLICY = {"schema_version": 1, "name": "t", "rules": [
    {"id": "pii", "detector": {"type": "pii", "entities": ["email"]}, "action": "redact"},
    {"id": "words", "stages": ["input"], "detector": {"type": "keywords", "words": ["forbidden"]}, "action": "block",
     "message": "no forbidden words"},
    {"id": "keys", "stages": ["output"], "detector": {"type": "secrets"}, "action": "block"}]}


@pytest.fixture
def guard(tmp_path):
    path = tmp_path / "p.yaml"
    from safety.policy import load_policy

    load_policy(POLICY).save(path)
    return resolve("lmstack.guards", "policy")(str(path))


def test_the_plugin_is_a_text_guard(guard):
    assert isinstance(guard, PolicyGuard) and isinstance(guard, TextGuard) and isinstance(guard.output(), OutputGuard)
    assert guard.check_input("write to jane@example.com") == (True, "write to [REDACTED:EMAIL]", "")
    assert guard.check_input("a forbidden word") == (False, "a forbidden word", "no forbidden words")
    with pytest.raises(ValueError, match="needs a policy"):
        PolicyGuard("")


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_output_streams_as_the_guard_checks(guard, cut):
    text = "Reach jane@example.com or bob@example.org for details."
    out = guard.output()
    sent = "".join(out.feed(text[i:i + cut]) for i in range(0, len(text), cut)) + out.finish()
    assert sent == Guard(guard.guard.policy).check(text, "output").text and not out.blocked and out.message == ""
    stop = guard.output()
    secret = "the key is AKIAIOSFODNN7EXAMPLE and more"
    sent = "".join(stop.feed(secret[i:i + cut]) for i in range(0, len(secret), cut))
    sent += "" if stop.blocked else stop.finish()
    assert stop.blocked and "AKIA" not in sent and "keys" in stop.message
