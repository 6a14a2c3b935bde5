"""Response bodies of the OpenAI API: completion and chat objects, streaming chunks, logprobs, usage.

Shapes follow the OpenAI API reference: legacy completions carry ``logprobs`` as parallel lists (``tokens``,
``token_logprobs``, ``top_logprobs`` dicts, ``text_offset``), with ``None`` for the first prompt token when the prompt
is echoed; chat completions carry ``logprobs.content`` items with ``token``, ``logprob``, ``bytes`` and
``top_logprobs``. A token's string is its own decoded text (an incomplete UTF-8 piece decodes to U+FFFD).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from serve.sampling import TokenLogprobs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse(data: Any) -> str:
    """One server-sent event carrying a JSON payload (or the literal [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class TokenText:
    """Decoded strings of single tokens, cached (top-logprob tables repeat the same ids)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            s = self._cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return s


def completion_logprobs(tok_text: TokenText, prompt_ids: Sequence[int] | None,
                        prompt_lps: Sequence[TokenLogprobs | None] | None, out_lps: Sequence[TokenLogprobs],
                        text_offset_start: int = 0) -> dict[str, list[Any]]:
    """The legacy ``logprobs`` object for an (optionally echoed) prompt and the generated tokens."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    pos = text_offset_start

    def add(token_id: int, lp: TokenLogprobs | None) -> None:
        nonlocal pos
        s = tok_text(token_id)
        tokens.append(s)
        offsets.append(pos)
        pos += len(s)
        if lp is None:
            token_logprobs.append(None)
            top.append(None)
            return
        token_logprobs.append(lp.logprob)
        # Keys are token strings, and distinct ids can decode alike (pieces of one UTF-8 character): keep the
        # larger logprob, so max(values) is always the true top-1 (lm-eval's is_greedy relies on it).
        table: dict[str, float] = {}
        for t, v in [*lp.top, (token_id, lp.logprob)]:  # OpenAI and vLLM list the chosen token too
            key = tok_text(t)
            table[key] = max(v, table.get(key, -math.inf))
        top.append(table)

    if prompt_ids is not None:
        for i, t in enumerate(prompt_ids):
            add(t, prompt_lps[i] if prompt_lps is not None else None)
    for lp in out_lps:
        add(lp.token, lp)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(tok_text: TokenText, out_lps: Sequence[TokenLogprobs], top_n: int) -> dict[str, Any]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        s = tok_text(token_id)
        return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top[:top_n]]}
                        for lp in out_lps]}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(rid: str, model: str, created: int, choices: list[dict[str, Any]],
                    use: dict[str, Any] | None, chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                            "choices": choices}
    if not chunk or use is not None:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, created: int, choices: list[dict[str, Any]], use: dict[str, Any] | None,
              chunk: bool = False, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chunk else "chat.completion",
                            "created": created, "model": model, "system_fingerprint": None, "choices": choices}
    if not chunk or include_usage:
        body["usage"] = use
    return body
