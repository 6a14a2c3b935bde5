"""A red-team target served over HTTP: an OpenAI-compatible ``POST /v1/chat/completions`` (lmstack's own server,
vLLM, llama.cpp's server, OpenAI itself), called with the standard library's ``urllib`` only.

A target is any callable ``(messages: list[dict]) -> str``; :class:`HTTPTarget` is one. Non-200 answers raise
:class:`TargetError` with the status and the server's error message or body; so do timeouts, refused connections
and answers that are not chat completions.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from specs.errors import LmstackError


class TargetError(LmstackError):
    """A target that could not answer: unreachable, timed out, a non-200 status or a malformed body."""


def chat_url(url: str) -> str:
    """``http://host:8000``, ``.../v1`` or the full ``.../v1/chat/completions`` -> the full endpoint."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://; got {url!r}")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _detail(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict) and "message" in doc["error"]:
            return str(doc["error"]["message"])
    except ValueError:
        pass
    return text[:2000] + ("..." if len(text) > 2000 else "")


class HTTPTarget:
    """``HTTPTarget(url)(messages) -> str``: one chat completion, greedy by default.

    ``model=None`` asks the server's ``GET /v1/models`` for its first model once. ``api_key`` goes in
    ``Authorization: Bearer``. ``params`` adds request fields (``{"seed": 0}``, ``{"top_p": 0.9}``).
    """

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 max_tokens: int = 256, temperature: float = 0.0, params: dict[str, Any] | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds; got {timeout}")
        self.url, self.model, self.api_key, self.timeout = chat_url(url), model, api_key, timeout
        self.params = {"max_tokens": max_tokens, "temperature": temperature, **(params or {})}

    def __repr__(self) -> str:
        return f"HTTPTarget({self.url!r}, model={self.model!r})"

    def _request(self, url: str, body: dict[str, Any] | None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise TargetError(f"{req.method} {url} returned HTTP {exc.code}: {_detail(exc.read())}") from None
        except TimeoutError:
            raise TargetError(f"{req.method} {url} timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            raise TargetError(f"cannot reach {url}: {exc.reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise TargetError(f"{req.method} {url} answered with a body that is not JSON: {_detail(raw)}") from None

    def _model(self) -> str:
        if self.model is None:
            url = self.url.removesuffix("/chat/completions") + "/models"
            doc = self._request(url, None)
            try:
                self.model = str(doc["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise TargetError(f"GET {url} lists no model ({str(doc)[:300]}); pass model=...") from None
        return self.model

    def __call__(self, messages: list[dict[str, str]]) -> str:
        doc = self._request(self.url, {"model": self._model(), "messages": messages, **self.params})
        try:
            content = doc["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TargetError(f"POST {self.url} answered without choices[0].message.content: "
                              f"{json.dumps(doc)[:500]}") from None
        return content or ""
