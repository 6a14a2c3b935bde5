"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure a client can cause maps to a 4xx with a message that says what was wrong; anything else is a 500
``server_error`` that is logged, and the server keeps running.
"""

from __future__ import annotations

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


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(status_code=self.status, headers=headers,
                            content={"error": {"message": self.message, "type": self.type, "param": self.param,
                                               "code": self.code}})


def from_validation(exc: ValidationError | RequestValidationError) -> APIError:
    """The first pydantic error as a 400 naming the parameter."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # pydantic reports union members as extra loc parts (e.g. 'str', 'list[int]'); keep the field path only.
    loc = [p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request. The request body must be valid JSON.",
                        code="invalid_json")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{param}': {msg}" if param else msg, param=param,
                    code="invalid_value")


def from_lmstack(exc: LmstackError) -> APIError:
    """Map engine and config errors to statuses: context/too-large 400, busy 429, unknown model 404."""
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc.message), param="messages" if exc.path == "prompt" else exc.path,
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
        return APIError(400, exc.message if param else str(exc), param=param, code="invalid_value")
    return APIError(400, str(exc))


async def parse_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "We could not parse the JSON body of your request. The request body must be valid "
                            "JSON.", code="invalid_json") from None


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
    async def _lm(_: Request, exc: LmstackError) -> JSONResponse:
        return from_lmstack(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"The server had an error while processing your request: {type(exc).__name__}",
                        type="server_error", code="internal_error").response()
