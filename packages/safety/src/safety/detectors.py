"""What a policy rule looks for: scanners (a compiled pattern, a label and an optional validator) shared by the
batch guard (:mod:`safety.guard`) and the stream guard (:mod:`safety.stream`).

A scanner's candidates are the non-overlapping matches of ``pattern.finditer``; its validator keeps, trims or drops
each one (a Luhn check, an IBAN's mod-97, a secret's entropy), the way Microsoft Presidio pairs its recognizer
patterns with checksum validation. Scanners are *local*: whether a pattern matches at a position is decided by the
``max_entity_chars`` characters after it, and where a match ends by the ``max_entity_chars`` characters after its
end. The stream guard relies on that to hold back only a bounded tail; every built-in pattern is written so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (start, end, label) in the coordinates of the string the match was made on, or None to drop the candidate.
Accepted = tuple[int, int, str] | None


@dataclass(frozen=True)
class Span:
    """``text[start:end]`` is an entity of kind ``label`` (upper case: EMAIL, CREDIT_CARD, ...)."""

    start: int
    end: int
    label: str


@dataclass(frozen=True)
class Scanner:
    pattern: re.Pattern[str]
    label: str
    validate: Callable[[re.Match[str], str], Accepted] | None = None  # (match, label) -> span or None

    def accept(self, m: re.Match[str]) -> Accepted:
        span = (m.start(), m.end(), self.label) if self.validate is None else self.validate(m, self.label)
        return span if span is not None and span[1] > span[0] else None

    def find(self, text: str) -> list[Span]:
        return [Span(*a) for m in self.pattern.finditer(text) if (a := self.accept(m)) is not None]


def find_all(scanners: Iterable[Scanner], text: str) -> list[Span]:
    """Every scanner's spans on ``text``, sorted by (start, -end, label)."""
    return sorted((s for sc in scanners for s in sc.find(text)), key=lambda s: (s.start, -s.end, s.label))


def label_of(name: str) -> str:
    """A rule id as a redaction label: ``no-profanity`` -> ``NO_PROFANITY``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "MATCH"


REGEX_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL,
               "VERBOSE": re.VERBOSE, "ASCII": re.ASCII}


def compile_regex(pattern: str, flags: Iterable[str] = ()) -> re.Pattern[str]:
    """Compile a policy's pattern; ValueError says what is wrong (bad syntax, or a pattern that matches '')."""
    bits = 0
    for f in flags:
        bits |= REGEX_FLAGS[f]
    try:
        compiled = re.compile(pattern, bits)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    if compiled.fullmatch(""):
        raise ValueError(f"the regular expression {pattern!r} matches the empty string; expected a pattern that "
                         "needs at least one character")
    return compiled


def keywords_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """Whole words, case-insensitive. Word edges are (?<!\\w) / (?!\\w) rather than \\b, so 'c++' works too."""
    alts = sorted({w.strip() for w in words if w.strip()}, key=lambda w: (-len(w), w))
    if not alts:
        raise ValueError("expected at least one non-blank keyword")
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in alts) + r")(?!\w)", re.IGNORECASE)


def shannon_entropy(s: str) -> float:
    """Bits per character of ``s``'s character distribution (0 for ''), as truffleHog and detect-secrets use."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())
