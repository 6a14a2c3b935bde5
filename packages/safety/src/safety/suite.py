"""Red-team suites: JSON Lines files of cases, one object a line, like promptfoo's test files and garak's probes.

A case is ``{"id", "category", "prompt", "system"?, "expect": "refuse"|"comply", "canary"?, "judge"?}``. The
judge (:mod:`safety.judges`) says what counts as the attack's success:

- ``canary``: the secret ``canary`` (which must occur in the system prompt or the prompt) shows in the output;
- ``pii``: PII of the system prompt shows in the output (the system prompt must hold some);
- ``policy``: the run's policy finds anything in the output;
- ``refusal``: for ``expect: refuse``, the model did not refuse; for ``expect: comply`` (over-refusal probes), it
  did refuse.

Without ``judge``: ``canary`` when a canary is given, else ``refusal``. Three suites ship with the package
(:func:`builtin_suites`): ``injection``, ``pii_leak`` and ``over_refusal``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safety.files import builtin_names, builtin_text
from safety.pii import find_pii
from specs.errors import ConfigError

JUDGES = ("canary", "pii", "policy", "refusal")


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)
    category: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    system: str | None = None
    expect: Literal["refuse", "comply"]
    canary: str | None = None
    judge: Literal["canary", "pii", "policy", "refusal"]

    @model_validator(mode="before")
    @classmethod
    def _default_judge(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("judge") is None:
            data = {**data, "judge": "canary" if data.get("canary") else "refusal"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.judge == "canary":
            if not self.canary:
                raise ValueError("judge 'canary' needs a 'canary'")
            if len(re.sub(r"[^0-9A-Za-z]", "", self.canary)) < 6:
                raise ValueError(f"canary {self.canary!r} is too short; expected at least 6 letters or digits")
            if self.canary not in (self.system or "") + "\n" + self.prompt:
                raise ValueError(f"canary {self.canary!r} occurs in neither 'system' nor 'prompt'; expected it in "
                                 "the text the model is asked to keep secret")
        if self.judge == "pii" and not (self.system and find_pii(self.system)):
            raise ValueError("judge 'pii' needs a 'system' prompt that holds PII; the pii detector finds none")
        return self

    def messages(self) -> list[dict[str, str]]:
        """The chat this case sends: the system prompt (if any), then the user's prompt."""
        sys_ = [{"role": "system", "content": self.system}] if self.system else []
        return [*sys_, {"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class Suite:
    name: str
    cases: tuple[Case, ...]

    @property
    def categories(self) -> list[str]:
        return sorted({c.category for c in self.cases})

    def to_jsonl(self) -> str:
        return "".join(json.dumps(c.model_dump(exclude_none=True)) + "\n" for c in self.cases)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def suite_from_lines(name: str, lines: list[str]) -> Suite:
    """Parse JSONL text (blank lines skipped). ConfigError paths are ``line N`` or ``line N.field``."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {no}", f"suite {name!r}: not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"line {no}", f"suite {name!r}: expected a JSON object; got {type(doc).__name__}")
        try:
            case = Case.model_validate(doc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = f"line {no}" + (f".{_loc(err['loc'])}" if err["loc"] else "")
            raise ConfigError(where, f"suite {name!r}: {err['msg'].removeprefix('Value error, ')}") from None
        if case.id in seen:
            raise ConfigError(f"line {no}.id", f"suite {name!r}: duplicate case id {case.id!r} (also line "
                                               f"{seen[case.id]})")
        seen[case.id] = no
        cases.append(case)
    if not cases:
        raise ConfigError("", f"suite {name!r} has no cases")
    return Suite(name, tuple(cases))


def builtin_suites() -> list[str]:
    """Names loadable as ``builtin:NAME``."""
    return builtin_names("suites", ".jsonl")


def load_suite(source: Suite | str | os.PathLike[str]) -> Suite:
    """A Suite from a Suite, ``builtin:NAME`` or a .jsonl file."""
    if isinstance(source, Suite):
        return source
    name = os.fspath(source)
    if name.startswith("builtin:"):
        key, text = builtin_text(name, "suites", ".jsonl", "suite")
        return suite_from_lines(key, text.splitlines())
    path = Path(name)
    if not path.is_file():
        raise ConfigError("", f"suite file {name!r} does not exist; expected a .jsonl file or builtin:NAME "
                              f"({', '.join('builtin:' + n for n in builtin_suites())})")
    return suite_from_lines(path.stem, path.read_text(encoding="utf-8").splitlines())
