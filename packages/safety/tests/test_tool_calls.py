"""The ``tool`` stage: function-name allow/deny lists and the other detectors on a call's arguments."""

from __future__ import annotations

import json

import pytest

from safety.guard import Guard
from safety.policy import load_policy
from safety.serving import PolicyGuard
from specs.errors import ConfigError
from specs.protocols import ToolCallGuard

POLICY = {"schema_version": 1, "name": "agent", "rules": [
    {"id": "allowed-tools", "stages": ["tool"], "detector": {"type": "tools", "allow": ["get_weather", "run_sql"]},
     "action": "block", "message": "That function may not be called."},
    {"id": "no-drop", "stages": ["tool"], "detector": {"type": "regex", "pattern": r"(?i)\bdrop\s+table\b"},
     "action": "block"},
    {"id": "secrets", "stages": ["tool", "output"], "detector": {"type": "secrets"}, "action": "redact"},
    {"id": "email-out", "detector": {"type": "pii", "entities": ["email"]}, "action": "redact"},
]}
KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example access key id


def test_names_and_arguments():
    g = Guard(POLICY)
    ok = g.check_tool_call("get_weather", '{"city": "Oslo"}')
    assert ok.allowed and ok.text == '{"city": "Oslo"}' and ok.findings == ()
    v = g.check_tool_call("delete_user", '{"id": 7}')
    assert not v.allowed and v.message == "That function may not be called." and v.blocked_by == ("allowed-tools",)
    assert v.findings[0].label == "TOOL:delete_user"
    v = g.check_tool_call("run_sql", '{"query": "DROP TABLE users"}')
    assert not v.allowed and v.blocked_by == ("no-drop",)
    v = g.check_tool_call("run_sql", json.dumps({"query": "select 1", "key": KEY}))
    assert v.allowed and KEY not in v.text and json.loads(v.text)["key"].startswith("[REDACTED:")
    # the default stages stay input and output: the email rule does not look at tool calls
    assert g.check_tool_call("get_weather", '{"to": "a@example.com"}').text == '{"to": "a@example.com"}'
    with pytest.raises(ValueError, match="use check_tool_call"):
        g.check("text", "tool")


def test_the_policy_guard_is_a_tool_call_guard():
    p = PolicyGuard.__new__(PolicyGuard)
    p.guard, p.name = Guard(POLICY), "policy:agent"
    assert isinstance(p, ToolCallGuard)
    assert p.check_tool_call("get_weather", "{}") == (True, "{}", "")
    allowed, _, message = p.check_tool_call("shutdown", "{}")
    assert not allowed and message == "That function may not be called."


@pytest.mark.parametrize("rule, message", [
    ({"id": "t", "detector": {"type": "tools", "allow": ["f"]}, "action": "block"}, r"stages must be \[tool\]"),
    ({"id": "t", "stages": ["tool"], "detector": {"type": "tools", "deny": ["f"]}, "action": "redact"},
     "cannot be redacted"),
    ({"id": "t", "stages": ["tool"], "detector": {"type": "tools"}, "action": "block"}, "needs allow"),
])
def test_bad_tools_rules(rule, message):
    with pytest.raises(ConfigError, match=message):
        load_policy({"schema_version": 1, "name": "x", "rules": [rule]})
