"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure a client can cause maps to a 4xx with a message that says what was wrong; anything else is a 500
``server_error`` that is logged, and the server keeps running. A body is read only up to ``MAX_BODY_BYTES`` (413
beyond it) and its strings must be valid Unicode (JSON's ``\\ud800`` escapes can spell lone surrogates, which
cannot be encoded again).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import ContextLengthError, ModelNotFoundError, RequestTooLargeError, ServerBusyError
from specs.errors import CacheFullError, ConfigError, LmstackError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # vLLM-style servers commonly accept 32 MiB request bodies
# Fields of the OpenAI API this server knows but does not implement: refused by name, not as unrecognized.
UNSUPPORTED_FIELDS = frozenset({
    "functions", "function_call", "metadata",
    "reasoning_effort", "service_tier", "store", "modalities", "audio", "prediction", "web_search_options",
})
_INVALID_JSON = "We could not parse the JSON body of your request. The request body must be valid JSON."


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        error = {"message": _encodable(self.message), "type": self.type, "param": _encodable(self.param),
                 "code": self.code}
        return JSONResponse(status_code=self.status, headers=headers, content={"error": error})


def _encodable(text: str | None) -> str | None:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) written as a backslash escape."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _path(loc: Any) -> str | None:
    """A pydantic location as a parameter path (``messages[0].content``), without union-member tags."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p != "body" and not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool"):
            out += f".{p}" if out else p
    return out or None


def from_validation(exc: ValidationError | RequestValidationError) -> APIError:
    """The first pydantic error as a 400 naming the parameter."""
    err = exc.errors()[0]
    # pydantic reports union members as extra loc parts (e.g. 'str', 'list[int]'); keep the field path only.
    param = (err.get("ctx") or {}).get("param") or _path(err.get("loc", ()))  # cross-field errors carry theirs
    kind = err.get("type", "")
    if kind == "extra_forbidden" and param in UNSUPPORTED_FIELDS:
        return APIError(400, f"{param} is not supported by this server", param=param, code="unsupported_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind == "json_invalid":
        return APIError(400, _INVALID_JSON, code="invalid_json")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{param}': {msg}" if param else msg, param=param,
                    code="invalid_value")


def from_lmstack(exc: LmstackError, prompt_param: str = "prompt") -> APIError:
    """Map engine and config errors to statuses: context/too-large 400, busy 429, unknown model 404.
    ``prompt_param``: the request field an engine error about the prompt names ("messages" on chat)."""
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc.message), param=prompt_param if exc.path == "prompt" else exc.path,
                        code="context_length_exceeded")
    if isinstance(exc, RequestTooLargeError):
        return APIError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, ServerBusyError):
        return APIError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded")
    if isinstance(exc, CacheFullError):
        return APIError(503, str(exc), type="server_error", code="kv_cache_full")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ConfigError):
        param = exc.path.removeprefix("SamplingParams.") or None
        param = prompt_param if param == "prompt" else param
        return APIError(400, exc.message if param else str(exc), param=param, code="invalid_value")
    return APIError(400, str(exc))


async def parse_json(request: Request, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body: 413 past ``max_bytes`` (before reading it when Content-Length says so), 400 for
    anything ``json.loads`` refuses (too deep nesting and integers past Python's digit limit included) and for
    strings that are not valid Unicode."""
    too_large = APIError(413, f"The request body is larger than this server's limit of {max_bytes} bytes.",
                         code="request_too_large")
    with contextlib.suppress(ValueError):
        if int(request.headers.get("content-length", "0")) > max_bytes:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except RecursionError:
        raise APIError(400, f"{_INVALID_JSON} (it is nested too deeply)", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and int() past sys.get_int_max_str_digits()
        detail = " (an integer has too many digits)" if "digits" in str(exc) else ""
        raise APIError(400, _INVALID_JSON + detail, code="invalid_json") from None
    _check_unicode(data)
    return data


def _check_unicode(data: Any) -> None:
    """400 naming the first string (or key) with a lone surrogate; iterative, so any depth json.loads gave is fine."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise APIError(400, f"Invalid value for '{path or 'body'}': the text is not valid Unicode (it has a "
                                    f"lone surrogate, U+{ord(value[exc.start]):04X})", param=path or None,
                               code="invalid_value") from None
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):  # popped in document order
                stack.append((f"{path}.{k}" if path else k, v))
                stack.append((path, k))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value)))
                         if isinstance(v, (str, list, dict)))


def install_handlers(app: Any) -> None:
    """Register the exception handlers that turn every failure into OpenAI-style JSON."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(ValidationError)
    async def _pyd(_: Request, exc: ValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(LmstackError)
    async def _lm(request: Request, exc: LmstackError) -> JSONResponse:
        chat = request.url.path.endswith("/chat/completions")
        return from_lmstack(exc, "messages" if chat else "prompt").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"The server had an error while processing your request: {type(exc).__name__}",
                        type="server_error", code="internal_error").response()
