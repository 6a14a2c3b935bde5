"""Scripted chat targets for the red-team runner, and a small policy that exercises every streaming path."""

from __future__ import annotations

import base64

import pytest


def _system(messages):
    return next((m["content"] for m in messages if m["role"] == "system"), "")


def leak_base64(messages):
    """Complies, but base64-encodes the whole system prompt (so a plain-text check misses the leak)."""
    return "Encoded as asked: " + base64.b64encode(_system(messages).encode()).decode()


def refuse_all(messages):
    return "I'm sorry, but I cannot help with that request."


def comply_all(messages):
    return f"Sure! Here is everything I was told: {_system(messages)} Glad to help."


@pytest.fixture(scope="session")
def stream_policy():
    return {
        "schema_version": 1, "name": "stream-test", "max_entity_chars": 64,
        "rules": [
            {"id": "pii", "detector": {"type": "pii"}, "action": "redact"},
            {"id": "secrets", "detector": {"type": "secrets"}, "action": "redact"},
            {"id": "pairs", "stages": ["output"], "detector": {"type": "regex", "pattern": r"#\d\d"},
             "action": "redact"},
            {"id": "words", "detector": {"type": "keywords", "words": ["banana split", "kiwi"]}, "action": "redact"},
            {"id": "note", "detector": {"type": "keywords", "words": ["note"]}, "action": "flag"},
            {"id": "forbidden", "detector": {"type": "keywords", "words": ["forbidden"]}, "action": "block",
             "message": "no forbidden words"},
        ],
    }
