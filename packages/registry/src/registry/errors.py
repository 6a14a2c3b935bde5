"""The registry's user errors, all :class:`specs.errors.LmstackError` so CLIs print them in one line (exit 2)."""

from __future__ import annotations

from specs.errors import LmstackError


class RegistryError(LmstackError):
    """A registry operation that cannot be done as asked (a stage rule, an existing destination, ...)."""


class NotFoundError(RegistryError, LookupError):
    """An unknown model, version, alias or stage; the message lists what exists."""


class IntegrityError(RegistryError):
    """Stored bytes that do not hash to what the manifest or the index says (a corrupted or edited file)."""


class GateError(RegistryError):
    """A promotion refused by a gate (a missing or bad signature, a metadata bound)."""


class SignatureError(RegistryError):
    """A missing, malformed or non-verifying signature envelope."""
