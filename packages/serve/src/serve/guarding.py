"""Guardrails around the server's traffic: an ``lmstack.guards`` plugin (specs' ``TextGuard``) checks what clients
send before the model sees it and what the model writes before clients see it.

``--guard NAME[:ARG]`` names the plugin and its argument (lmstack-safety's ``policy:builtin:default``). A refused
prompt or message is HTTP 400 with code ``content_policy_violation`` and the guard's message; a redacted one reaches
the model redacted. Each choice's text goes through its own ``OutputGuard`` (held back, redacted or stopped as the
guard says); a choice the guard stops ends with ``finish_reason: content_filter``, OpenAI's value for the same.
"""

from __future__ import annotations

from typing import Any

from serve.http_errors import APIError
from specs.errors import ConfigError, PluginError
from specs.plugins import resolve
from specs.protocols import TextGuard


def load_guard(spec: str | None) -> TextGuard | None:
    """The guard ``spec`` (``NAME[:ARG]``) names, or None for none; ConfigError naming the installed ones."""
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    try:
        factory = resolve("lmstack.guards", name)
    except PluginError as exc:
        raise ConfigError("serve.guard", f"{exc} (lmstack-safety provides 'policy': --guard "
                                         "policy:builtin:default)") from None
    try:
        guard = factory(arg)
    except (ValueError, OSError) as exc:
        raise ConfigError("serve.guard", f"{spec!r}: {exc}") from None
    if not isinstance(guard, TextGuard):
        raise ConfigError("serve.guard", f"the {name!r} plugin built a {type(guard).__name__}, which lacks "
                                         "check_input and output (specs.protocols.TextGuard)")
    return guard


def checked(guard: TextGuard | None, text: str, param: str) -> str:
    """``text`` as the model may see it; APIError 400 when the guard refuses it."""
    if guard is None:
        return text
    allowed, out, message = guard.check_input(text)
    if not allowed:
        raise APIError(400, message or f"{param} was refused by the server's guard {guard.name}", param=param,
                       code="content_policy_violation")
    return out


class ChoiceGuards:
    """One ``OutputGuard`` a choice (no-ops without a guard): ``text(i, delta, finished) -> (text, stopped)``."""

    def __init__(self, guard: TextGuard | None, n: int):
        self.guards: list[Any] | None = [guard.output() for _ in range(n)] if guard is not None else None

    def text(self, i: int, delta: str, finished: bool) -> tuple[str, bool]:
        if self.guards is None:
            return delta, False
        g = self.guards[i]
        out = g.feed(delta) if delta else ""
        if finished and not g.blocked:
            out += g.finish()
        return out, g.blocked


def guard_tool_calls(guard: TextGuard | None, message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the message with each tool call's arguments as the guard lets them pass, whether the guard refused a call).
    A guard with ``check_tool_call`` (specs' ``ToolCallGuard``, lmstack-safety's ``tool`` rules) sees every call;
    one refused call ends the choice as ``content_filter`` with no calls, as a refused text does."""
    check = getattr(guard, "check_tool_call", None)
    if check is None or not message.get("tool_calls"):
        return message, False
    calls = []
    for call in message["tool_calls"]:
        allowed, arguments, _ = check(call["function"]["name"], call["function"]["arguments"])
        if not allowed:
            return {"role": "assistant", "content": None}, True
        calls.append({**call, "function": {**call["function"], "arguments": arguments}})
    return {**message, "tool_calls": calls}, False
