"""A policy as a server's guardrails: the ``lmstack.guards`` plugin ``policy`` (specs' ``TextGuard`` protocol).

``python -m serve --model DIR --guard policy:builtin:default`` (or ``policy:my_policy.yaml``) checks every prompt
and chat message a client sends against the policy's ``input`` rules before the model sees it (a block is refused
with HTTP 400, redactions reach the model redacted) and streams every response through a :class:`StreamGuard` of
its ``output`` rules (redacted as it goes; a block ends the choice with ``finish_reason: content_filter``, as
OpenAI's content filter does). Function calls a model makes (serve's tool calling) pass the ``tool`` rules.
Serve imports nothing of this package: it finds the plugin by name.
"""

from __future__ import annotations

from safety.guard import Guard
from safety.stream import StreamGuard


class _Output:
    """specs' ``OutputGuard`` over a :class:`StreamGuard` of the ``output`` stage."""

    def __init__(self, guard: Guard):
        self._stream = StreamGuard(guard, "output")

    @property
    def blocked(self) -> bool:
        return self._stream.blocked

    @property
    def message(self) -> str:
        v = self._stream.verdict
        return v.message if v is not None else ""

    def feed(self, delta: str) -> str:
        return self._stream.feed(delta)

    def finish(self) -> str:
        return self._stream.finish()


class PolicyGuard:
    """``PolicyGuard("builtin:default")``: a policy (``builtin:NAME``, or a YAML/JSON file) as a server's guard."""

    def __init__(self, policy: str):
        if not policy:
            raise ValueError("the policy guard needs a policy: --guard policy:builtin:default or policy:FILE.yaml")
        self.guard = Guard(policy)
        self.name = f"policy:{policy}"

    def check_input(self, text: str) -> tuple[bool, str, str]:
        v = self.guard.check(text, "input")
        return v.allowed, v.text, v.message

    def output(self) -> _Output:
        return _Output(self.guard)

    def check_tool_call(self, name: str, arguments: str) -> tuple[bool, str, str]:
        """specs' ``ToolCallGuard``: the policy's ``tool`` rules on a call the model makes (``tools`` allow/deny
        lists on its name, the other detectors on its arguments)."""
        v = self.guard.check_tool_call(name, arguments)
        return v.allowed, v.text, v.message
