"""Retention policies: which versions to delete, and why each of the others is kept.

In the spirit of container registries' lifecycle rules (Amazon ECR lifecycle policies, Harbor tag retention):
keep the newest ``keep_last`` versions, anything younger than ``max_age_days``, anything in ``keep_stages``;
a version is kept when any rule keeps it, deleted when none does. Two protections hold whatever the policy
says: a version in production and a version an alias points to are never deleted (set the alias elsewhere, or
archive the version, first). Planning is a pure function of the versions, aliases and the time, so the dry
run and the applied run agree; ``Registry.apply_retention`` plans again inside its transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry._io import parse_iso
from registry.index import STAGES
from registry.manifest import ModelVersion, is_number
from specs.errors import ConfigError

ALWAYS_KEPT_STAGE = "production"


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """``keep_last``: newest versions kept per model (None: no count rule). ``max_age_days``: versions younger
    are kept (None: no age rule); at least one of the two must be set. ``keep_stages``: stages whose versions are
    kept. ``keep_aliased``: recorded in plans; aliased versions are protected either way."""

    keep_last: int | None = None
    keep_stages: tuple[str, ...] = ("production", "staging")
    keep_aliased: bool = True
    max_age_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep_last is None and self.max_age_days is None:
            raise ConfigError("retention", "a policy needs keep_last or max_age_days (or both)")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or isinstance(self.keep_last, bool)
                                           or self.keep_last < 0):
            raise ConfigError("retention.keep_last", f"expected an integer >= 0 or null, got {self.keep_last!r}")
        if self.max_age_days is not None and (not is_number(self.max_age_days) or self.max_age_days < 0):
            raise ConfigError("retention.max_age_days", f"expected a number >= 0 or null, got {self.max_age_days!r}")
        if isinstance(self.keep_stages, str):
            raise ConfigError("retention.keep_stages", f"expected a list of stages, got the string "
                                                       f"{self.keep_stages!r}")
        for s in self.keep_stages:
            if s not in STAGES:
                raise ConfigError("retention.keep_stages", f"unknown stage {s!r}; valid stages: {', '.join(STAGES)}")
        if not isinstance(self.keep_aliased, bool):
            raise ConfigError("retention.keep_aliased", f"expected true or false, got {self.keep_aliased!r}")
        object.__setattr__(self, "keep_stages", tuple(self.keep_stages))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RetentionPolicy:
        if not isinstance(doc, Mapping):
            raise ConfigError("retention", f"expected a mapping, got {type(doc).__name__}")
        known = ("keep_last", "keep_stages", "keep_aliased", "max_age_days")
        for k in doc:
            if k not in known:
                raise ConfigError(f"retention.{k}", f"unknown field; expected one of {', '.join(known)}")
        return cls(**doc)

    def to_dict(self) -> dict[str, Any]:
        return {"keep_last": self.keep_last, "keep_stages": list(self.keep_stages),
                "keep_aliased": self.keep_aliased, "max_age_days": self.max_age_days}


@dataclass(frozen=True)
class Decision:
    name: str
    version: int
    delete: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "delete": self.delete, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class RetentionPlan:
    policy: RetentionPolicy
    decisions: tuple[Decision, ...] = field(default=())

    @property
    def delete(self) -> list[Decision]:
        return [d for d in self.decisions if d.delete]

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if not d.delete]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "delete": [d.to_dict() for d in self.delete],
                "keep": [d.to_dict() for d in self.keep]}


def plan(policy: RetentionPolicy, versions: Iterable[ModelVersion], now: datetime) -> RetentionPlan:
    """Decide every live version of ``versions`` (any number of models) under ``policy`` at time ``now``."""
    by_model: dict[str, list[ModelVersion]] = {}
    for v in versions:
        if v.deleted_at is None:
            by_model.setdefault(v.name, []).append(v)
    out = []
    for name in sorted(by_model):
        newest_first = sorted(by_model[name], key=lambda v: v.version, reverse=True)
        for rank, v in enumerate(newest_first):
            age = (now - parse_iso(v.created_at)).total_seconds() / 86400.0
            keep, why_not = [], []
            if v.stage == ALWAYS_KEPT_STAGE:
                keep.append("in production (never deleted)")
            if v.aliases:
                names = ", ".join(repr(a) for a in v.aliases)
                keep.append(f"aliased {names} (never deleted)")
            if v.stage in policy.keep_stages and v.stage != ALWAYS_KEPT_STAGE:
                keep.append(f"in {v.stage} (keep_stages)")
            if policy.keep_last is not None:
                if rank < policy.keep_last:
                    keep.append(f"among the newest {policy.keep_last} (keep_last)")
                else:
                    why_not.append(f"not among the newest {policy.keep_last} (keep_last)")
            if policy.max_age_days is not None:
                if age < policy.max_age_days:
                    keep.append(f"{age:.1f} days old, younger than {policy.max_age_days:g} (max_age_days)")
                else:
                    why_not.append(f"{age:.1f} days old, at least {policy.max_age_days:g} (max_age_days)")
            if not keep:
                why_not.append(f"stage {v.stage} not in keep_stages")
            out.append(Decision(name, v.version, not keep, tuple(keep or why_not)))
    return RetentionPlan(policy, tuple(out))
