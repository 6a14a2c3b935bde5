"""Tool calling for ``/v1/chat/completions``: OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls``.

The tools reach the prompt through the chat template's ``tools`` variable (Hugging Face's convention, which the
templates of Llama 3.1, Qwen 2.5, Mistral and Hermes models read). What the model writes back depends on
``tool_choice``, as in vLLM:

- a named function (``{"type": "function", "function": {"name": ...}}``): decoding is constrained
  (:mod:`serve.structured`) to a JSON object matching that function's ``parameters``, which becomes the call's
  ``arguments``; ``finish_reason`` stays ``stop``, as OpenAI's does for a forced call.
- ``required``: constrained to a JSON array of ``{"name", "parameters"}`` calls (one when
  ``parallel_tool_calls`` is false), each matching its function's schema; ``finish_reason: tool_calls``.
- ``auto`` (the default when tools are given): the model decides in its own format, which a tool-call parser
  (the server's ``--tool-call-parser``, vLLM's flag) reads; without a parser ``auto`` is refused (400, as vLLM
  without ``--enable-auto-tool-choice``). ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks (Hermes 2/3, Qwen 2.5 and most fine-tunes on their data); the text outside them stays the content.
  ``lmstack.tool_parsers`` entry points add others: ``parse(text) -> (content, [(name, arguments JSON)])``, with
  an optional ``marker`` attribute (the text a call starts with) for streaming.
- ``none``: tools are rendered (the model may mention them) and no call is parsed.

A streamed ``auto`` choice sends its content as it comes until a call begins (the parser's ``marker``, hermes'
``<tool_call>``), then its calls in one delta before its finish chunk (each call with its ``index``, as OpenAI's
streamed calls have); a named or required choice, all calls, sends them in that one delta.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serve.http_errors import APIError
from serve.sampling import StructuredOutput
from specs.errors import PluginError
from specs.plugins import available, resolve

ParsedCalls = tuple[str | None, list[tuple[str, str]]]  # (content, [(name, arguments as JSON text)])
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def parse_hermes(text: str) -> ParsedCalls:
    """Hermes-format calls (``<tool_call>{"name", "arguments"}</tool_call>``; a last block that max_tokens or EOS
    cut before its closing tag too); a block that is not such JSON stays in the content, as vLLM's parser leaves
    it."""
    calls: list[tuple[str, str]] = []
    pieces: list[str] = []
    pos = 0
    for m in _HERMES.finditer(text):
        try:
            doc = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not (isinstance(doc, dict) and isinstance(doc.get("name"), str)):
            continue
        args = doc.get("arguments", doc.get("parameters", {}))
        calls.append((doc["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
        pieces.append(text[pos:m.start()])
        pos = m.end()
    if not calls:
        return text, []
    pieces.append(text[pos:])
    content = "".join(pieces).strip()
    return content or None, calls


parse_hermes.marker = "<tool_call>"  # type: ignore[attr-defined]  # where a call begins: content streams until it

BUILTIN_PARSERS: dict[str, Callable[[str], ParsedCalls]] = {"hermes": parse_hermes}


class AutoStream:
    """One streamed ``auto`` choice: its content goes out as it comes while no call has begun (a tail that could
    start the parser's ``marker`` is held back); from the marker on the text is kept, and :meth:`finish` parses it
    into the rest of the content and the calls."""

    def __init__(self, parser: Callable[[str], ParsedCalls], marker: str):
        self.parser, self.marker = parser, marker
        self.text, self.sent, self.inside = "", 0, False

    def feed(self, delta: str) -> str:
        """The content that may be sent now."""
        self.text += delta
        if self.inside:
            return ""
        at = self.text.find(self.marker, self.sent)
        if at >= 0:
            self.inside = True
            end = at
        else:
            tail = self.text[self.sent:]
            hold = next((k for k in range(min(len(tail), len(self.marker) - 1), 0, -1)
                         if self.marker.startswith(tail[-k:])), 0)
            end = len(self.text) - hold
        out, self.sent = self.text[self.sent:end], end
        return out

    def finish(self) -> tuple[str | None, list[tuple[str, str]]]:
        """(the content not sent yet, the calls), once the choice has ended."""
        rest = self.text[self.sent:]
        if not self.inside:
            return rest or None, []
        return self.parser(rest)



def tool_parser(name: str) -> Callable[[str], ParsedCalls]:
    """A built-in parser or an ``lmstack.tool_parsers`` plugin; an unknown name lists the valid ones."""
    if name in BUILTIN_PARSERS:
        return BUILTIN_PARSERS[name]
    try:
        return resolve("lmstack.tool_parsers", name)
    except PluginError:
        valid = sorted({*BUILTIN_PARSERS, *available("lmstack.tool_parsers")})
        raise PluginError(f"unknown tool-call parser {name!r}; valid: {', '.join(valid)}") from None


@dataclass(frozen=True)
class ToolPlan:
    """What one chat request's tools do: the template's ``tools``, the decoding constraint, how to read the
    output back (``mode``: none, named, required or auto)."""

    tools: list[dict[str, Any]]
    mode: str
    structured: StructuredOutput | None = None
    name: str | None = None  # the named function
    parser: Callable[[str], ParsedCalls] | None = None

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def stream(self) -> AutoStream | None:
        """For a streamed choice: an :class:`AutoStream` when ``auto``'s parser says where a call begins (its
        ``marker``); None (the whole text at the end) otherwise."""
        marker = getattr(self.parser, "marker", None)
        return AutoStream(self.parser, marker) if self.mode == "auto" and self.parser and marker else None

    def streamed_message(self, content: str | None, calls: list[tuple[str, str]]) -> tuple[dict[str, Any], bool]:
        """The final delta's message of an :class:`AutoStream` choice, and whether it called."""
        return _message(content, calls), bool(calls)

    def message(self, text: str) -> tuple[dict[str, Any], bool]:
        """(the assistant message for a finished choice's text, whether it called a tool)."""
        if self.mode == "named":
            return _message(None, [(self.name or "", text)]), True
        if self.mode == "required":
            try:
                calls = [(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in json.loads(text)]
            except (json.JSONDecodeError, TypeError, KeyError):  # cut off by max_tokens: no whole call
                return _message(text, []), False
            return _message(None, calls), bool(calls)
        if self.mode == "auto" and self.parser is not None:
            content, calls = self.parser(text)
            return _message(content, calls), bool(calls)
        return _message(text, []), False

    def finish_reason(self, reason: str | None, called: bool) -> str | None:
        """``tool_calls`` when the model chose to call (required, auto); a forced call keeps ``stop``."""
        return "tool_calls" if called and self.mode in ("required", "auto") and reason == "stop" else reason


def _message(content: str | None, calls: Sequence[tuple[str, str]]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                              "function": {"name": name, "arguments": args}} for name, args in calls]
    return msg


def plan(tools: Sequence[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None,
         parser: Callable[[str], ParsedCalls] | None) -> ToolPlan:
    """The plan for a request's ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (dicts as OpenAI sends them;
    APIError 400 naming the field for a choice the server cannot honour)."""
    tools = list(tools or [])
    if not tools:
        if tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return ToolPlan([], "none")
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    if len(by_name) != len(tools):
        raise APIError(400, "tools must have distinct function names", param="tools", code="invalid_value")
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return ToolPlan(tools, "none")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in by_name:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the tools ({', '.join(by_name)})",
                           param="tool_choice", code="invalid_value")
        schema = by_name[name].get("parameters") or _ANY_OBJECT
        return ToolPlan(tools, "named", StructuredOutput(json=json.dumps(schema), whitespace=False), name=name)
    if choice == "required":
        item = {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["name", "parameters"],
                           "properties": {"name": {"const": n}, "parameters": f.get("parameters") or _ANY_OBJECT}}
                          for n, f in by_name.items()]}
        array: dict[str, Any] = {"type": "array", "minItems": 1, "items": item}
        if parallel is False:
            array["maxItems"] = 1
        return ToolPlan(tools, "required", StructuredOutput(json=json.dumps(array), whitespace=False))
    if parser is None:
        raise APIError(400, '"auto" tool choice needs a tool-call parser on the server (python -m serve '
                            '--tool-call-parser hermes); or pass tool_choice "required" or a named function',
                       param="tool_choice", code="invalid_value")
    return ToolPlan(tools, "auto", parser=parser)


def stream_delta(message: dict[str, Any]) -> dict[str, Any]:
    """A finished message as one streamed delta: content, and tool calls with their index."""
    delta: dict[str, Any] = {}
    if message.get("content"):
        delta["content"] = message["content"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(message["tool_calls"])]
    return delta
