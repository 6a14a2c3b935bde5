"""Guardrails: apply a policy's rules to a prompt (stage ``input``), a model's text (stage ``output``) or a function
call it makes (stage ``tool``, :meth:`Guard.check_tool_call`).

``Guard(policy).check(text, stage)`` returns a :class:`Verdict`: whether the text may pass (no ``block`` rule
fired), every finding (rule id, label, character span in the original text, action) and the text with the spans of
``redact`` rules replaced by ``[REDACTED:<LABEL>]``. Overlapping redaction spans merge into one run, labelled by its
first span (by start, longest first): Presidio's anonymizer resolves overlaps the same way, by keeping one
replacement per character. :mod:`safety.stream` applies the same rules to text as a model produces it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from safety.credentials import secret_scanners
from safety.detectors import Scanner, compile_regex, keywords_pattern, label_of
from safety.pii import pii_scanners
from safety.policy import STAGES, Policy, Rule, load_policy
from specs.errors import ConfigError, PluginError
from specs.plugins import resolve

CLASSIFIER_GROUP = "lmstack.safety_classifiers"


@dataclass(frozen=True)
class Finding:
    """Rule ``rule`` found ``label`` at ``text[start:end]`` (offsets in the text as given) and ``action`` applies.
    ``score`` is a classifier's score (None for the other detectors)."""

    rule: str
    label: str
    start: int
    end: int
    action: str
    score: float | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    text: str  # the text with redactions applied (for a stream stopped by a block: what was emitted)
    findings: tuple[Finding, ...]
    stage: str
    message: str = ""  # the first blocking rule's message, or a default naming it

    @property
    def blocked_by(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule for f in self.findings if f.action == "block"))

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "stage": self.stage, "message": self.message, "text": self.text,
                "blocked_by": list(self.blocked_by), "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to run: its scanners, or a length limit, or a classifier's scorer."""

    rule: Rule
    scanners: tuple[Scanner, ...] = ()
    max_chars: int | None = None
    scorer: Callable[[str], float] | None = None
    threshold: float = 0.5
    label: str = ""

    def score(self, text: str) -> float:
        assert self.scorer is not None
        s = float(self.scorer(text))
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"the classifier of rule {self.rule.id!r} returned {s!r}; expected a score in [0, 1]")
        return s

    def finding(self, start: int, end: int, label: str, score: float | None = None) -> Finding:
        return Finding(self.rule.id, label, start, end, self.rule.action, score)

    def over_length(self, n: int) -> list[Finding]:
        """A length limit's finding for a text of ``n`` characters: the part past the limit."""
        return [self.finding(self.max_chars, n, self.label)] if self.max_chars is not None and n > self.max_chars \
            else []

    def whole_text(self, text: str) -> list[Finding]:
        """The findings of a length limit or a classifier, which look at the whole text."""
        if self.max_chars is not None:
            return self.over_length(len(text))
        if self.scorer is not None and text and (s := self.score(text)) >= self.threshold:
            return [self.finding(0, len(text), self.label, s)]
        return []

    def find(self, text: str) -> list[Finding]:
        out = [self.finding(*a) for sc in self.scanners for m in sc.pattern.finditer(text)
               if (a := sc.accept(m)) is not None]
        return out + self.whole_text(text)


def compile_rule(i: int, rule: Rule, classifiers: Mapping[str, Any] | None = None) -> CompiledRule:
    d = rule.detector
    where = f"rules[{i}].detector"
    if d.type == "regex":
        return CompiledRule(rule, (Scanner(compile_regex(d.pattern, d.flags), d.label or label_of(rule.id)),))
    if d.type == "keywords":
        return CompiledRule(rule, (Scanner(keywords_pattern(d.words), d.label or label_of(rule.id)),))
    if d.type == "pii":
        return CompiledRule(rule, pii_scanners(d.entities))
    if d.type == "secrets":
        return CompiledRule(rule, secret_scanners(d.kinds, d.min_entropy))
    if d.type == "length":
        return CompiledRule(rule, max_chars=d.max_chars, label="LENGTH")
    if d.type == "tools":
        return CompiledRule(rule, label=d.label or "TOOL")
    try:
        factory = resolve(CLASSIFIER_GROUP, d.name, extra=classifiers)
    except PluginError as exc:
        raise ConfigError(f"{where}.name", f"rule {rule.id!r}: {exc}") from None
    try:
        scorer = factory(**d.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.options", f"rule {rule.id!r}: classifier {d.name!r} rejected its options "
                                              f"{d.options}: {exc}") from None
    if not callable(scorer):
        raise ConfigError(f"{where}.name", f"rule {rule.id!r}: classifier {d.name!r} built a "
                                           f"{type(scorer).__name__}; expected a callable score(text) -> float")
    return CompiledRule(rule, scorer=scorer, threshold=d.threshold, label=d.label or label_of(rule.id))


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    return stage


def sort_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(set(findings), key=lambda f: (f.start, -f.end, f.rule, f.label)))


def redaction_runs(findings: Iterable[Finding]) -> list[tuple[int, int, str]]:
    """Merge the (sorted) redact findings' overlapping spans: [(start, end, label of the run's first span)]."""
    runs: list[tuple[int, int, str]] = []
    for f in findings:
        if f.action != "redact":
            continue
        if runs and f.start < runs[-1][1]:
            s, e, label = runs[-1]
            runs[-1] = (s, max(e, f.end), label)
        else:
            runs.append((f.start, f.end, f.label))
    return runs


def render(text: str, runs: Iterable[tuple[int, int, str]], lo: int, hi: int, base: int = 0) -> str:
    """``text`` (which starts at absolute offset ``base``) between absolute ``lo`` and ``hi``, runs replaced."""
    out, at = [], lo
    for s, e, label in runs:
        out.append(text[at - base:s - base])
        out.append(f"[REDACTED:{label}]")
        at = e
    out.append(text[at - base:hi - base])
    return "".join(out)


def block_message(findings: tuple[Finding, ...], rules: Mapping[str, Rule], policy: str) -> str:
    for f in findings:
        if f.action == "block":
            return rules[f.rule].message or f"blocked by rule {f.rule!r} of policy {policy!r} ({f.label})"
    return ""


class Guard:
    """A policy's rules, compiled once. ``classifiers`` maps extra classifier names to factories (tests, or
    classifiers not installed as plugins); installed ``lmstack.safety_classifiers`` plugins resolve by name."""

    def __init__(self, policy: Policy | dict[str, Any] | str, classifiers: Mapping[str, Any] | None = None):
        self.policy = load_policy(policy)
        self.rules = tuple(compile_rule(i, r, classifiers) for i, r in enumerate(self.policy.rules))
        self._by_id = {r.id: r for r in self.policy.rules}

    def rules_for(self, stage: str) -> tuple[CompiledRule, ...]:
        check_stage(stage)
        return tuple(r for r in self.rules if stage in r.rule.stages)

    def verdict(self, text: str, findings: Iterable[Finding], stage: str, emitted: str | None = None) -> Verdict:
        """The verdict for ``findings`` on ``text``: redactions applied unless ``emitted`` is the text to report."""
        found = sort_findings(findings)
        message = block_message(found, self._by_id, self.policy.name)
        if emitted is None:
            emitted = render(text, redaction_runs(found), 0, len(text))
        return Verdict(not message, emitted, found, stage, message)

    def check(self, text: str, stage: str = "input") -> Verdict:
        """Apply the rules of ``stage`` ("input" or "output") to ``text``."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str; got {type(text).__name__}")
        if stage == "tool":
            raise ValueError("the tool stage checks a function call: use check_tool_call(name, arguments)")
        return self.verdict(text, [f for r in self.rules_for(stage) for f in r.find(text)], stage)

    def check_tool_call(self, name: str, arguments: str) -> Verdict:
        """Apply the ``tool`` rules to a call of function ``name`` with ``arguments`` (its JSON text): a ``tools``
        rule looks at the name (a finding spans the whole arguments), the others at the arguments, which the
        verdict's text carries redacted."""
        found: list[Finding] = []
        for r in self.rules_for("tool"):
            d = r.rule.detector
            if d.type == "tools":
                if d.fires(name):
                    found.append(r.finding(0, len(arguments), f"{r.label}:{name}"))
            else:
                found += r.find(arguments)
        return self.verdict(arguments, found, "tool")
