"""Policy-as-code: a versioned YAML/JSON document of rules, validated with pydantic.

A rule is ``{id, stages, detector, action, message}``: where it applies (``input`` = the prompt, ``output`` = the
model's text, ``tool`` = a function call the model makes: its arguments, and its name for the ``tools`` detector;
default input and output), what it looks for (a detector, a union tagged by ``type``: regex, keywords, pii,
secrets, length, classifier, tools) and what happens on a match (``block`` refuses the text, ``redact`` replaces
the span with ``[REDACTED:<LABEL>]``, ``flag`` only reports it). This is the declarative layer NeMo Guardrails'
rails configs and Guardrails AI's validators give, cut down to rules a CPU applies in microseconds. Errors name the
field path (``rules[2].detector.pattern``), the rule's id and what was expected (:class:`specs.errors.ConfigError`).

Two policies ship with the package: ``builtin:default`` and ``builtin:pii`` (:func:`builtin_policies`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safety.credentials import KINDS
from safety.detectors import REGEX_FLAGS, compile_regex, keywords_pattern
from safety.files import builtin_names, builtin_text
from safety.pii import ENTITIES
from specs.errors import ConfigError
from specs.io import atomic_write_text

SCHEMA_VERSION = 1
STAGES = ("input", "output", "tool")
DEFAULT_STAGES = ("input", "output")  # a rule without ``stages``; ``tool`` rules say so
ACTIONS = ("block", "redact", "flag")
DETECTOR_TYPES = ("regex", "keywords", "pii", "secrets", "length", "classifier", "tools")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexDetector(_Strict):
    type: Literal["regex"]
    flags: tuple[Literal[tuple(REGEX_FLAGS)], ...] = ()  # type: ignore[valid-type]
    pattern: str
    label: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str, info: Any) -> str:
        compile_regex(v, info.data.get("flags", ()))
        return v


class KeywordsDetector(_Strict):
    type: Literal["keywords"]
    words: tuple[str, ...] = Field(min_length=1)
    label: str | None = None

    @field_validator("words")
    @classmethod
    def _not_blank(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if blank := [i for i, w in enumerate(v) if not w.strip()]:
            raise ValueError(f"words[{blank[0]}] is blank; expected a word or phrase")
        keywords_pattern(v)
        return v


class PiiDetector(_Strict):
    type: Literal["pii"]
    entities: tuple[Literal[ENTITIES], ...] = Field(default=ENTITIES, min_length=1)  # type: ignore[valid-type]


class SecretsDetector(_Strict):
    type: Literal["secrets"]
    kinds: tuple[Literal[KINDS], ...] = Field(default=KINDS, min_length=1)  # type: ignore[valid-type]
    min_entropy: float = Field(default=4.0, ge=0.0, le=8.0)


class LengthDetector(_Strict):
    type: Literal["length"]
    max_chars: int = Field(ge=1)


class ClassifierDetector(_Strict):
    """A plugin of the entry-point group ``lmstack.safety_classifiers``: ``factory(**options)`` returns a callable
    ``score(text) -> float`` in [0, 1]; the rule fires when the score is at least ``threshold``."""

    type: Literal["classifier"]
    name: str = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None


class ToolsDetector(_Strict):
    """The function a model calls (stage ``tool`` only): a finding when its name is not in ``allow`` (when given)
    or is in ``deny``."""

    type: Literal["tools"]
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    label: str | None = None

    @model_validator(mode="after")
    def _something(self) -> ToolsDetector:
        if self.allow is None and not self.deny:
            raise ValueError("a tools detector needs allow (the functions that may be called) or deny")
        return self

    def fires(self, name: str) -> bool:
        return (self.allow is not None and name not in self.allow) or name in self.deny


Detector = Annotated[RegexDetector | KeywordsDetector | PiiDetector | SecretsDetector | LengthDetector
                     | ClassifierDetector | ToolsDetector, Field(discriminator="type")]


class Rule(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)
    stages: tuple[Literal["input", "output", "tool"], ...] = Field(default=DEFAULT_STAGES, min_length=1)
    detector: Detector
    action: Literal["block", "redact", "flag"]
    message: str = ""

    @field_validator("action")
    @classmethod
    def _tools_rules(cls, v: str, info: Any) -> str:
        d, stages = info.data.get("detector"), info.data.get("stages", DEFAULT_STAGES)
        if isinstance(d, ToolsDetector):
            if tuple(stages) != ("tool",):
                raise ValueError("a tools detector looks at the function a model calls: stages must be [tool]")
            if v == "redact":
                raise ValueError("a function name cannot be redacted: a tools rule's action is block or flag")
        return v


class Policy(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    # The stream guard holds back this many characters: an entity up to this long split across chunks is caught.
    # The built-in patterns' longest entity is an email of 253 characters; the default covers them all.
    max_entity_chars: int = Field(default=256, ge=8, le=65536)
    rules: tuple[Rule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy as YAML (JSON for a .json path), atomically."""
        doc = self.to_dict()
        as_json = Path(path).suffix == ".json"
        return atomic_write_text(path, json.dumps(doc, indent=2) + "\n" if as_json
                                 else yaml.safe_dump(doc, sort_keys=False))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (i and loc[i - 1] == "detector" and part in DETECTOR_TYPES):  # pydantic's tag step in the loc
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict[str, Any], doc: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing", "extra_forbidden") and not err["type"].startswith("value_error"):
        got = repr(err.get("input"))
        msg += f" (got {got[:80] + '...' if len(got) > 80 else got})"
    loc = err["loc"]
    rules = doc.get("rules")
    if len(loc) > 1 and loc[0] == "rules" and isinstance(loc[1], int) and isinstance(rules, list):
        rule = rules[loc[1]] if loc[1] < len(rules) else None
        if isinstance(rule, dict) and isinstance(rule.get("id"), str):
            msg = f"rule {rule['id']!r}: {msg}"
    return msg


def policy_from_dict(doc: Any) -> Policy:
    """Validate a parsed document. Raises ConfigError naming the first bad field (and counting the others)."""
    if not isinstance(doc, dict):
        raise ConfigError("", f"expected a mapping with schema_version, name and rules; got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version is None:
        raise ConfigError("schema_version", f"missing; expected {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise ConfigError("schema_version", f"unsupported version {version!r}; this lmstack-safety reads version "
                                            f"{SCHEMA_VERSION} (upgrade lmstack-safety for newer policies)")
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more error{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        raise ConfigError(_path(first["loc"]), _message(first, doc) + more) from None
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        if rule.id in seen:
            raise ConfigError(f"rules[{i}].id", f"duplicate rule id {rule.id!r} (also rules[{seen[rule.id]}].id); "
                                                "expected unique ids")
        seen[rule.id] = i
    return policy


def builtin_policies() -> list[str]:
    """Names loadable as ``builtin:NAME``."""
    return builtin_names("policies", ".yaml")


def _parse(text: str, where: str, is_json: bool) -> Any:
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("", f"{where} is not valid {'JSON' if is_json else 'YAML'}: {exc}") from None


def load_policy(source: Policy | dict[str, Any] | str | os.PathLike[str]) -> Policy:
    """A Policy from a Policy, a dict, ``builtin:NAME``, or a .yaml/.yml/.json file."""
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        return policy_from_dict(source)
    name = os.fspath(source)
    if name.startswith("builtin:"):
        _, text = builtin_text(name, "policies", ".yaml", "policy")
        return policy_from_dict(_parse(text, name, False))
    path = Path(name)
    if not path.is_file():
        raise ConfigError("", f"policy file {name!r} does not exist; expected a .yaml/.json file or builtin:NAME "
                              f"({', '.join('builtin:' + n for n in builtin_policies())})")
    return policy_from_dict(_parse(path.read_text(encoding="utf-8"), name, path.suffix == ".json"))
