"""Errors the engine and server raise for requests they cannot take; the server maps each to an HTTP status.

``ContextLengthError`` (400): the prompt plus the requested tokens exceed the model's context.
``RequestTooLargeError`` (400): the request needs more KV-cache blocks than the whole pool has, so it can never run.
``ServerBusyError`` (429): the waiting queue is full because the KV cache is saturated; retry later.
``ModelNotFoundError`` (404): the request names a model this server does not serve.
"""

from __future__ import annotations

from specs.errors import CacheFullError, ConfigError, LmstackError


class ContextLengthError(ConfigError):
    """Prompt + max_tokens does not fit the model's context window."""


class RequestTooLargeError(CacheFullError):
    """More KV blocks than the pool holds: this request cannot run on this server at all."""


class ServerBusyError(CacheFullError):
    """Too many requests are waiting for KV-cache room."""


class ModelNotFoundError(LmstackError, LookupError):
    """The requested model name is not served here."""
