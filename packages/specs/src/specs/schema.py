"""Machinery shared by every config dataclass: typed validation, dict round trips, dotted overrides.

A config is a frozen keyword-only ``@dataclass`` that subclasses :class:`ConfigBase`. Field types are
checked on construction with pydantic's strict validators (``Annotated[int, Field(gt=0)]`` carries
ranges), nested configs are built from mappings, and every failure is a :class:`ConfigError` naming the
dotted field path. ``check()`` holds cross-field rules. This follows torchtitan's per-component configs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar, get_args, get_origin

import yaml
from pydantic import TypeAdapter, ValidationError

from specs.errors import ConfigError, suggest

C = TypeVar("C", bound="ConfigBase")

# Dotted prefix for error messages while a config is built from a document; None for direct construction.
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("lmstack_config_path", default=None)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


def _strip(tp: Any) -> Any:
    """Drop Annotated and Optional wrappers: the type a value is converted towards."""
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return tp


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, ConfigBase)


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _describe(tp: Any) -> str:
    """The type as a reader would write it: ``int > 0 | 'auto'`` for ``Annotated[int, Field(gt=0)] | "auto"``."""
    bounds = []
    while get_origin(tp) is typing.Annotated:
        tp, *meta = get_args(tp)
        for m in meta:  # pydantic's Field(gt=0) and annotated_types' Gt(0) both end up as objects with .gt etc.
            for item in getattr(m, "metadata", [m]):
                bounds += [f"{sym} {getattr(item, k)}" for k, sym in _BOUNDS if getattr(item, k, None) is not None]
    tp = _strip(tp)
    if tp is type(None):
        return "None"
    if get_origin(tp) is typing.Literal:
        out = " | ".join(repr(a) for a in get_args(tp))
    elif get_origin(tp) in (typing.Union, types.UnionType):
        out = " | ".join(_describe(a) for a in get_args(tp))
    else:
        out = getattr(tp, "__name__", str(tp))
    return " ".join([out, *bounds])


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Validate ``value`` against ``tp``; build nested configs; lists become tuples."""
    base = _strip(tp)
    if _is_config(base):
        if isinstance(value, base):
            return value
        if isinstance(value, Mapping):
            return base.from_dict(value, path=path)
        if value is None and get_origin(tp) in (typing.Union, types.UnionType):
            return None
        raise ConfigError(path, f"expected a mapping for {base.__name__}, got {type(value).__name__}")
    if get_origin(base) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            value = tuple(value)
    try:
        return _adapter(tp).validate_python(value, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        if get_origin(_strip(tp)) in (typing.Union, types.UnionType):  # a union: no one member's complaint
            raise ConfigError(path + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int)),
                              f"expected {_describe(tp)}, got {value!r}") from None
        where = "".join(f"[{p}]" for p in loc)
        raise ConfigError(path + where, f"{err['msg']} (expected {_describe(tp)}, got {value!r})") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Base of all lmstack configs. Subclasses are ``@dataclass(frozen=True, kw_only=True)``."""

    kind: ClassVar[str] = "Config"

    def __post_init__(self) -> None:
        prefix = _PATH.get()
        object.__setattr__(self, "_prefix", type(self).__name__ if prefix is None else prefix)
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name], self._where(f.name)))
        self.check()

    def _where(self, field: str) -> str:
        prefix = self.__dict__.get("_prefix", type(self).__name__)
        return f"{prefix}.{field}" if prefix else field

    def check(self) -> None:
        """Cross-field rules; raise ConfigError via ``self.fail(field, message)``. Subclasses override."""

    def fail(self, field: str, message: str) -> typing.NoReturn:
        raise ConfigError(self._where(field), message)

    # --- dict round trip ---------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, path: str = "") -> C:
        """Build from a mapping. Unknown keys fail with the closest valid name; types are checked."""
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
        names = cls.field_names()
        for key in data:
            if key not in names:
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(
                    where, f"unknown key for {cls.__name__}{suggest(str(key), names)}; valid keys: {', '.join(names)}"
                )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            where = f"{path}.{missing[0]}" if path else missing[0]
            raise ConfigError(where, f"required field missing from {cls.__name__}")
        token = _PATH.set(path)
        try:
            return cls(**dict(data))
        finally:
            _PATH.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (tuples become lists)."""
        return _plain(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(obj: Any) -> Any:
    if isinstance(obj, ConfigBase):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# --- dotted command-line overrides -------------------------------------------------------------
def parse_override_args(args: Sequence[str]) -> list[tuple[str, str]]:
    """``["--dist.strategy", "FSDP", "--train.steps=10", "--flag"]`` -> [(path, raw value)].

    A bare ``--flag`` followed by another option (or nothing) means ``true``.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError("", f"expected an override like --section.field VALUE, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        out.append((key.replace("-", "_"), raw))
    return out


def field_type(cls: type[ConfigBase], dotted: str) -> Any:
    """The declared type at ``a.b.c`` under ``cls``; unknown segments fail with suggestions."""
    tp: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        base = _strip(tp)
        if not _is_config(base):
            raise ConfigError(".".join(walked), f"is a {_describe(tp)}, not a section; cannot set {dotted!r}")
        names = base.field_names()
        if part not in names:
            raise ConfigError(
                ".".join([*walked, part]),
                f"unknown field of {base.__name__}{suggest(part, names)}; valid: {', '.join(names)}",
            )
        tp = _hints(base)[part]
        walked.append(part)
    return tp


def parse_value(raw: str, tp: Any) -> Any:
    """Turn a command-line string into a value for a field of type ``tp``."""
    base = _strip(tp)
    literal_strs = get_origin(base) is typing.Literal and all(isinstance(a, str) for a in get_args(base))
    if base is str or literal_strs:
        if literal_strs and raw in get_args(base):  # a choice spelled 'none' (dist.strategy) is that choice
            return raw
        return None if raw.lower() in ("null", "none") and base is not str else raw
    if get_origin(base) is tuple:  # a,b,c or [a, b, c]
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return tuple(parse_value(v.strip(), get_args(base)[0]) for v in text.split(",") if v.strip())
    try:
        val = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # not YAML: the field's type check names the field and what it expects
    if isinstance(val, str) and base is float:
        try:
            return float(val)
        except ValueError:
            return val
    if isinstance(val, int) and not isinstance(val, bool) and base is float:
        return float(val)
    return val


def apply_overrides(
    data: dict[str, Any], cls: type[ConfigBase], overrides: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Return a copy of ``data`` with each (dotted path, raw string) applied, typed by ``cls``'s schema."""
    out = _deepcopy(data)
    for dotted, raw in overrides:
        value = parse_value(raw, field_type(cls, dotted))
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, Mapping):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
