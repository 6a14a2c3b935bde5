"""Guardrails for generation: a policy applied to text as a model produces it, and a wrapper for any
``generate_fn(prompt, **kw) -> str``.

:class:`StreamGuard` takes text deltas and returns what is safe to emit now. It holds back a tail of
``policy.max_entity_chars`` characters, so an entity split across chunks is still found, and emits a redaction as
one ``[REDACTED:<LABEL>]`` once its span can no longer grow. Its output, concatenated, is exactly what
``Guard.check`` returns on the whole text, for any split into chunks (tested with hypothesis); text past the first
blocking match is never emitted. This is the chunked output rail of NeMo Guardrails' streaming mode, with the
chunk boundary made exact instead of overlapping windows.

Each scanner keeps the position its matches are settled up to and resumes there, so a feed costs about
``max_entity_chars`` characters of scanning whatever the text's length. A match is settled once
``max_entity_chars`` characters follow its end (the locality of :mod:`safety.detectors`). Classifier rules score
the whole text, so a stage that has one holds everything back until :meth:`StreamGuard.finish`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from safety.guard import Finding, Guard, Verdict, check_stage, redaction_runs, render, sort_findings
from specs.errors import LmstackError


class Blocked(LmstackError):
    """A guarded call refused: ``verdict`` says which rule blocked and where."""

    def __init__(self, verdict: Verdict):
        self.verdict = verdict
        super().__init__(verdict.message)


class StreamGuard:
    """``feed(delta) -> str`` as text arrives, ``finish() -> str`` at the end; ``verdict`` once blocked or
    finished. After a block, ``blocked`` is True and every further feed returns ''."""

    def __init__(self, guard: Guard, stage: str = "output"):
        self.guard, self.stage = guard, check_stage(stage)
        self._rules = guard.rules_for(stage)
        self._hold = guard.policy.max_entity_chars
        self._whole = any(r.scorer is not None for r in self._rules)
        self._scan = [(r, sc) for r in self._rules for sc in r.scanners]
        self._resume = [0] * len(self._scan)  # per scanner: matches before here are settled
        self._buf, self._base, self._n = "", 0, 0  # self._buf is the text from absolute offset self._base on
        self.position = 0  # the original text emitted (or redacted) so far ends here
        self._findings: list[Finding] = []
        self._pending: list[Finding] = []  # settled redactions not emitted yet
        self._out: list[str] = []
        self.verdict: Verdict | None = None

    @property
    def blocked(self) -> bool:
        return self.verdict is not None and not self.verdict.allowed

    def feed(self, delta: str) -> str:
        """Add ``delta`` (the model's next text); return the text that may be emitted now ('' when blocked)."""
        if self.verdict is not None:
            if self.blocked:
                return ""
            raise ValueError("feed() after finish(); start a new StreamGuard for a new generation")
        if not isinstance(delta, str):
            raise ValueError(f"delta must be a str; got {type(delta).__name__}")
        self._buf += delta
        self._n += len(delta)
        return "" if self._whole else self._advance(final=False)

    def finish(self) -> str:
        """The rest of the text, now that no more will come; sets ``verdict``."""
        if self.verdict is not None:
            return ""
        if self._whole:
            v = self.guard.check(self._buf, self.stage)
            self.verdict, self.position = v, self._n if v.allowed else 0
            return v.text if v.allowed else ""
        out = self._advance(final=True)
        if self.verdict is None:
            self.verdict = self.guard.verdict("", self._findings, self.stage, emitted="".join(self._out))
        return out

    def _advance(self, final: bool) -> str:
        n, base = self._n, self._base
        horizon = n if final else n - self._hold
        cap = n  # nothing at or after an unsettled redact/block match is emitted
        new: list[Finding] = []
        for k, (rule, sc) in enumerate(self._scan):
            settled = True
            for m in sc.pattern.finditer(self._buf, max(self._resume[k] - base, 0)):
                s, e = m.start() + base, m.end() + base
                if e > horizon:  # more text may still extend it, or undo it
                    if rule.rule.action != "flag":
                        cap = min(cap, s)
                    self._resume[k], settled = s, False
                    break
                if (a := sc.accept(m)) is not None:
                    new.append(rule.finding(a[0] + base, a[1] + base, a[2]))
                self._resume[k] = e
            if settled:
                self._resume[k] = max(self._resume[k], horizon)
        growing: list[Finding] = []  # a length limit's span is certain once passed, but grows with the text
        for rule in self._rules:
            if rule.max_chars is not None and (final or rule.rule.action == "block"):
                new += rule.over_length(n)
            elif rule.max_chars is not None and rule.rule.action == "redact":
                growing += rule.over_length(n)
        self._findings += new
        if any(f.action == "block" for f in new):
            self.verdict = self.guard.verdict("", self._findings, self.stage, emitted="".join(self._out))
            self._buf, self._pending = "", []
            return ""
        self._pending += [f for f in new if f.action == "redact"]
        q = max(min(horizon, cap), self.position)
        runs = redaction_runs(sort_findings([*self._pending, *growing]))
        for s, e, _ in runs:
            if s < q < e:  # never cut a redaction run: it may still merge with what comes next
                q = max(s, self.position)
                break
        done = [(max(s, self.position), e, label) for s, e, label in runs if self.position < e <= q]
        out = render(self._buf, done, self.position, q, base)
        self._pending = [f for f in self._pending if f.end > q]
        self.position = q
        self._out.append(out)
        keep = min([q, *self._resume]) - self._hold  # lookbehind context for the scanners' next attempts
        if keep > base:
            self._buf, self._base = self._buf[keep - base:], keep
        return out


def guard_stream(deltas: Iterable[str], guard: Guard, stage: str = "output") -> Iterator[str]:
    """Yield the safe text of a stream of deltas; stops at a block. The generator's ``StreamGuard`` is not exposed:
    use :class:`StreamGuard` directly when the verdict is needed."""
    sg = StreamGuard(guard, stage)
    for delta in deltas:
        if out := sg.feed(delta):
            yield out
        if sg.blocked:
            return
    if out := sg.finish():
        yield out


def guarded(generate_fn: Callable[..., str], guard: Guard, *, on_block: str = "refuse") -> Callable[..., str]:
    """Wrap ``generate_fn(prompt: str, **kw) -> str``: the prompt is checked (stage ``input``; redactions applied
    before the model sees it) and so is the output (stage ``output``).

    On a block the wrapper returns a refusal naming the policy and the rule's message (``on_block="refuse"``) or
    raises :class:`Blocked` carrying the verdict (``on_block="raise"``).
    """
    if on_block not in ("refuse", "raise"):
        raise ValueError(f"on_block must be 'refuse' or 'raise'; got {on_block!r}")

    def refuse(v: Verdict) -> str:
        if on_block == "raise":
            raise Blocked(v)
        what = "request" if v.stage == "input" else "response"
        return f"Sorry, the {what} was blocked by safety policy {guard.policy.name!r}: {v.message}"

    @functools.wraps(generate_fn)
    def wrapper(prompt: str, **kw: Any) -> str:
        v = guard.check(prompt, "input")
        if not v.allowed:
            return refuse(v)
        out = generate_fn(v.text, **kw)
        if not isinstance(out, str):
            raise ValueError(f"generate_fn returned {type(out).__name__}; expected str")
        w = guard.check(out, "output")
        return w.text if w.allowed else refuse(w)

    return wrapper
