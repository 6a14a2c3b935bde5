"""Retrieval as a tool a model can call: the OpenAI function-calling spec and its dispatcher.

:func:`search_tool` returns the ``tools`` entry of a chat-completions request (``{"type": "function", "function":
{name, description, parameters}}``, parameters a JSON Schema). :func:`run_tool_call` takes the ``tool_calls`` item
the model produced, validates its JSON arguments against that schema (jsonschema, Draft 2020-12) and returns the
``{"role": "tool", ...}`` message to append, so a tool-using loop needs no glue code. Invalid arguments come back
as an error message for the model to correct, as tool-calling frameworks do, rather than an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from rag.index import MODES, RagIndex

DESCRIPTION = ("Search the document collection and return the most relevant passages, each with its source "
               "document id and a relevance score.")


def search_tool(name: str = "search_documents", description: str = DESCRIPTION, *, max_k: int = 20
                ) -> dict[str, Any]:
    """The OpenAI ``tools`` entry for searching an index."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "What to search for, in natural language."},
            "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 5,
                  "description": "How many passages to return."},
            "mode": {"type": "string", "enum": list(MODES), "default": "auto",
                     "description": "bm25 (keywords), dense (meaning), hybrid (both), auto."},
        },
        "required": ["query"], "additionalProperties": False}}}


def run_tool_call(index: RagIndex, call: Mapping[str, Any], spec: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Execute one ``tool_calls`` item against ``index``; returns the tool message for the conversation."""
    spec = spec or search_tool()
    fn = call.get("function") or {}
    call_id = call.get("id", "")

    def reply(content: Mapping[str, Any]) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(content, ensure_ascii=False)}

    want = spec["function"]["name"]
    if fn.get("name") != want:
        return reply({"error": f"unknown tool {fn.get('name')!r}; this index answers {want!r}"})
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except json.JSONDecodeError as exc:
        return reply({"error": f"arguments are not valid JSON: {exc}"})
    try:
        jsonschema.Draft202012Validator(spec["function"]["parameters"]).validate(args)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
        return reply({"error": f"{where}: {exc.message}"})
    try:
        hits = index.search(args["query"], args.get("k", 5), mode=args.get("mode", "auto"))
    except ValueError as exc:  # e.g. mode dense on an index without vectors
        return reply({"error": str(exc)})
    return reply({"results": [{"source": h.chunk.doc_id, "chunk": h.chunk.id, "score": round(h.score, 6),
                               "text": h.chunk.text} for h in hits]})
