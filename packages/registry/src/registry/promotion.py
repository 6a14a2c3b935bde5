"""Stage rules and promotion gates.

Stages follow MLflow's Model Registry lifecycle (https://mlflow.org/docs/latest/model-registry.html):
``none -> staging -> production -> archived``, any transition allowed (rolling back to an archived version is a
promotion too), and with ``archive_existing`` the versions already in the target stage (staging or production)
move to ``archived``, so a model has at most one production version by default. Gates are checked inside the
promotion's transaction: ``require_signature`` (a DSSE signature that verifies, checked by the caller) and
``require_metadata``, bounds on numeric metadata found by dotted path (``{"eval.ppl": {"max": 20}}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import GateError
from registry.index import STAGES
from registry.manifest import is_number, lookup
from specs.errors import ConfigError

BOUND_KEYS = ("min", "max")
_CLI_BOUND = re.compile(r"^\s*([^<>=\s]+)\s*(<=|>=)\s*(\S+)\s*$")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    return stage


@dataclass(frozen=True)
class Bound:
    """``min <= metadata[key] <= max`` (either side may be None)."""

    key: str
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        parts = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)


def parse_bounds(spec: Mapping[str, Mapping[str, Any]] | None) -> list[Bound]:
    """``{"eval.ppl": {"max": 20}, "eval.acc": {"min": 0.5}}`` -> Bounds; a bad document is a ConfigError
    whose path names the field (``require_metadata.eval.ppl.max``)."""
    if not spec:
        return []
    if not isinstance(spec, Mapping):
        raise ConfigError("require_metadata", f"expected a mapping of metadata key -> {{min, max}}, "
                                              f"got {type(spec).__name__}")
    out = []
    for key, bound in spec.items():
        path = f"require_metadata.{key}"
        if not isinstance(bound, Mapping) or not bound:
            raise ConfigError(path, f"expected a mapping with 'min' and/or 'max', got {bound!r}")
        unknown = sorted(set(bound) - set(BOUND_KEYS))
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}", f"unknown bound; expected one of {', '.join(BOUND_KEYS)}")
        for k, v in bound.items():
            if not is_number(v):
                raise ConfigError(f"{path}.{k}", f"expected a finite number, got {v!r}")
        out.append(Bound(key, bound.get("min"), bound.get("max")))
    return out


def parse_cli_bound(text: str) -> tuple[str, dict[str, float]]:
    """``"eval.ppl<=20"`` -> ``("eval.ppl", {"max": 20.0})``; ``>=`` gives ``min``."""
    m = _CLI_BOUND.match(text)
    if m is None:
        raise ConfigError("--require", f"{text!r}: expected KEY<=NUMBER or KEY>=NUMBER (e.g. eval.ppl<=20)")
    try:
        value = float(m.group(3))
    except ValueError:
        raise ConfigError("--require", f"{text!r}: {m.group(3)!r} is not a number") from None
    return m.group(1), {"max" if m.group(2) == "<=" else "min": value}


def check_bounds(metadata: Mapping[str, Any], bounds: list[Bound], where: str) -> None:
    """Raise a GateError naming the first key that is missing, not a number, or out of its bound."""
    for b in bounds:
        try:
            value = lookup(metadata, b.key)
        except KeyError:
            raise GateError(f"{where}: metadata has no {b.key!r}; the gate requires {b.key} {b.describe()}") from None
        if not is_number(value):
            raise GateError(f"{where}: metadata {b.key} = {value!r} is not a number; the gate requires "
                            f"{b.key} {b.describe()}")
        if b.min is not None and value < b.min:
            raise GateError(f"{where}: metadata {b.key} = {value:g} is below the gate's minimum {b.min:g}")
        if b.max is not None and value > b.max:
            raise GateError(f"{where}: metadata {b.key} = {value:g} is above the gate's maximum {b.max:g}")
