"""Retrieval-augmented prompts with numbered sources, citation parsing, and answers from an OpenAI-compatible server.

The prompt follows the common grounded-QA shape (the numbered-source style of Bing chat, Perplexity and LangChain's
RAG templates): a system message that restricts the model to the sources and asks for ``[n]`` citations, and a user
message that lists the sources, then the question. :func:`ask` posts it to ``/v1/chat/completions`` (lmstack's own
server, ``python -m serve``, speaks it) with the standard library's HTTP client.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.index import Hit, RagIndex

SYSTEM = ("Answer the question using only the numbered sources. Cite every claim with the number of its source in "
          "square brackets, like [1] or [2][3]. If the sources do not contain the answer, say that you do not know.")

_CITE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def format_sources(hits: Sequence[Hit], *, max_chars: int | None = None) -> str:
    """``[1] (doc_id) text`` blocks; with ``max_chars`` the later sources are cut to fit."""
    blocks, used = [], 0
    for n, h in enumerate(hits, start=1):
        block = f"[{n}] ({h.chunk.doc_id}) {h.chunk.text}"
        if max_chars is not None and used + len(block) > max_chars:
            room = max_chars - used
            if room <= len(f"[{n}] ({h.chunk.doc_id}) "):
                break
            block = block[:room]
        blocks.append(block)
        used += len(block) + 2
    return "\n\n".join(blocks)


def build_messages(question: str, hits: Sequence[Hit], *, system: str = SYSTEM,
                   max_source_chars: int | None = None) -> list[dict[str, str]]:
    """Chat messages (OpenAI's role/content dicts) asking ``question`` over ``hits``."""
    if not question.strip():
        raise ValueError("the question is empty")
    sources = format_sources(hits, max_chars=max_source_chars) if hits else "(no sources were found)"
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"}]


def citations(answer: str, n_sources: int | None = None) -> list[int]:
    """Source numbers cited as ``[n]`` or ``[n, m]`` in ``answer``, in first-cited order (out-of-range dropped)."""
    seen: list[int] = []
    for group in _CITE.findall(answer):
        for n in (int(x) for x in group.split(",")):
            if n >= 1 and (n_sources is None or n <= n_sources) and n not in seen:
                seen.append(n)
    return seen


@dataclass(frozen=True)
class Answer:
    text: str
    hits: list[Hit]
    cited: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.text, "cited": self.cited, "sources": [h.to_json() for h in self.hits]}


def chat(url: str, messages: list[dict[str, str]], *, model: str | None = None, api_key: str | None = None,
         max_tokens: int = 512, temperature: float = 0.0, timeout: float = 120.0) -> str:
    """The first choice's content from an OpenAI-compatible ``/v1/chat/completions`` at ``url`` (the base URL)."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if model:
        body["model"] = model
    endpoint = url.rstrip("/")
    endpoint += "/chat/completions" if endpoint.endswith("/v1") else "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{endpoint} answered {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"cannot reach {endpoint}: {exc.reason}") from None
    try:
        return doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"{endpoint} answered without choices[0].message.content: {str(doc)[:500]}") from None


def ask(index: RagIndex, question: str, url: str, *, k: int = 5, mode: str = "auto", model: str | None = None,
        api_key: str | None = None, max_tokens: int = 512, max_source_chars: int | None = 12000,
        reranker: Any = None, rerank_depth: int = 50) -> Answer:
    """Retrieve ``k`` chunks (re-ranked by ``reranker`` when given), ask the server, and return the answer with
    the sources it cited."""
    hits = index.search(question, k, mode=mode, reranker=reranker, rerank_depth=rerank_depth)
    text = chat(url, build_messages(question, hits, max_source_chars=max_source_chars), model=model,
                api_key=api_key, max_tokens=max_tokens)
    return Answer(text, hits, citations(text, len(hits)))
