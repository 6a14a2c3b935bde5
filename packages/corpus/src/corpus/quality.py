"""Configurable document quality filters after Gopher's rules (Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", Appendix A: quality filtering and repetition removal).

``QualityConfig.gopher()`` is the paper's MassiveWeb setting for prose: 50-100,000 words, mean word length 3-10,
hash and ellipsis symbol-to-word ratios <= 0.1, <= 90% bullet lines, <= 30% lines ending in an ellipsis, >= 80% of
words with a letter, >= 2 of the stop words (the, be, to, of, and, that, have, with), and the repetition limits of
its Table A1 (duplicate lines 30%, paragraphs 30%, their characters 20%/20%, top 2/3/4-gram character share
20/18/16%, duplicated 5..10-gram character share 15..10%). ``QualityConfig.default()`` keeps the length, symbol
and repetition ideas with limits loose enough for source code and docs (the embedded corpus is Python source);
``QualityConfig.none()`` only drops empty documents. A limit set to None is not checked.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from specs.errors import ConfigError

_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")
_BULLETS = ("•", "-", "*", "‣", "◦", "⁃", "·")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_COUNTS = ("min_chars", "max_chars", "min_words", "max_words", "min_stop_words")  # integers >= 0
_LENGTHS = ("min_mean_word_len", "max_mean_word_len")  # characters, >= 0
_SHARES = ("max_hash_ratio", "max_ellipsis_ratio", "max_bullet_lines", "max_ellipsis_lines", "min_alpha_words",
           "max_dup_line_frac", "max_dup_para_frac", "max_dup_line_char_frac", "max_dup_para_char_frac")  # [0, 1]


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    min_chars: int | None = 1
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None
    min_mean_word_len: float | None = None
    max_mean_word_len: float | None = None
    max_hash_ratio: float | None = None
    max_ellipsis_ratio: float | None = None
    max_bullet_lines: float | None = None
    max_ellipsis_lines: float | None = None
    min_alpha_words: float | None = None
    min_stop_words: int | None = None
    max_dup_line_frac: float | None = None
    max_dup_para_frac: float | None = None
    max_dup_line_char_frac: float | None = None
    max_dup_para_char_frac: float | None = None
    max_top_ngram_char_frac: tuple[tuple[int, float], ...] = ()
    max_dup_ngram_char_frac: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, expected: str, got: object) -> ConfigError:
            return ConfigError(f"quality.{name}", f"must be {expected}, got {got!r}")

        for name in _COUNTS:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise bad(name, "an integer >= 0", v)
        for name in _LENGTHS:
            v = getattr(self, name)
            if v is not None and not v >= 0:  # also refuses NaN
                raise bad(name, "a length >= 0", v)
        for name in _SHARES:
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise bad(name, "a ratio in [0, 1]", v)
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words"),
                       ("min_mean_word_len", "max_mean_word_len")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ConfigError(f"quality.{lo}", f"must be <= {hi} ({b}), got {a}")
        for name in ("max_top_ngram_char_frac", "max_dup_ngram_char_frac"):
            for item in getattr(self, name):
                if not (len(item) == 2 and isinstance(item[0], int) and item[0] >= 1 and 0 <= item[1] <= 1):
                    raise ConfigError(f"quality.{name}", f"expected (n >= 1, ratio in [0, 1]) pairs, got {item!r}")

    @classmethod
    def gopher(cls) -> QualityConfig:
        return cls(min_words=50, max_words=100_000, min_mean_word_len=3, max_mean_word_len=10, max_hash_ratio=0.1,
                   max_ellipsis_ratio=0.1, max_bullet_lines=0.9, max_ellipsis_lines=0.3, min_alpha_words=0.8,
                   min_stop_words=2, max_dup_line_frac=0.3, max_dup_para_frac=0.3, max_dup_line_char_frac=0.2,
                   max_dup_para_char_frac=0.2, max_top_ngram_char_frac=((2, 0.2), (3, 0.18), (4, 0.16)),
                   max_dup_ngram_char_frac=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)))

    @classmethod
    def default(cls) -> QualityConfig:
        return cls(min_chars=20, max_chars=2_000_000, min_words=3, min_mean_word_len=2, max_mean_word_len=30,
                   max_hash_ratio=0.5, max_ellipsis_ratio=0.3, max_dup_line_frac=0.5, max_dup_line_char_frac=0.5,
                   max_top_ngram_char_frac=((2, 0.4),))

    @classmethod
    def none(cls) -> QualityConfig:
        return cls()

    @classmethod
    def preset(cls, name: str) -> QualityConfig:
        presets = {"gopher": cls.gopher, "default": cls.default, "none": cls.none}
        if name not in presets:
            raise ConfigError("quality", f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in them)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for it in items:
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    total = sum(map(len, items)) or 1
    return dup_n / len(items), dup_chars / total


def _top_ngram_frac(words: list[str], n: int) -> float:
    if len(words) < n:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n))))  # zip of shifted lists: n-grams without a Python loop
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / (sum(map(len, words)) or 1)


def _dup_ngram_frac(words: list[str], n: int) -> float:
    """Share of word characters covered by n-grams that occur more than once (each word counted once)."""
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    covered = bytearray(len(words))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = b"\x01" * n
    return sum(len(w) for w, c in zip(words, covered) if c) / (sum(map(len, words)) or 1)


def check_quality(text: str, cfg: QualityConfig) -> str | None:
    """The name of the first rule ``text`` fails (e.g. ``'min_words'``), or None when it passes."""
    c = cfg
    if c.min_chars is not None and len(text.strip()) < c.min_chars:
        return "min_chars"
    if c.max_chars is not None and len(text) > c.max_chars:
        return "max_chars"
    words = _WORD.findall(text)
    n = len(words)
    if c.min_words is not None and n < c.min_words:
        return "min_words"
    if c.max_words is not None and n > c.max_words:
        return "max_words"
    if n:
        mean = sum(map(len, words)) / n
        if c.min_mean_word_len is not None and mean < c.min_mean_word_len:
            return "min_mean_word_len"
        if c.max_mean_word_len is not None and mean > c.max_mean_word_len:
            return "max_mean_word_len"
        if c.max_hash_ratio is not None and text.count("#") / n > c.max_hash_ratio:
            return "max_hash_ratio"
        if c.max_ellipsis_ratio is not None and (text.count("...") + text.count("…")) / n > c.max_ellipsis_ratio:
            return "max_ellipsis_ratio"
        if c.min_alpha_words is not None and sum(bool(_ALPHA.search(w)) for w in words) / n < c.min_alpha_words:
            return "min_alpha_words"
        if c.min_stop_words is not None and sum(w.lower() in STOP_WORDS for w in words) < c.min_stop_words:
            return "min_stop_words"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if lines:
        if c.max_bullet_lines is not None and sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) > \
                c.max_bullet_lines:
            return "max_bullet_lines"
        if c.max_ellipsis_lines is not None and sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) > \
                c.max_ellipsis_lines:
            return "max_ellipsis_lines"
    if c.max_dup_line_frac is not None or c.max_dup_line_char_frac is not None:
        frac, chars = _dup_fraction(lines)
        if c.max_dup_line_frac is not None and frac > c.max_dup_line_frac:
            return "max_dup_line_frac"
        if c.max_dup_line_char_frac is not None and chars > c.max_dup_line_char_frac:
            return "max_dup_line_char_frac"
    if c.max_dup_para_frac is not None or c.max_dup_para_char_frac is not None:
        paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
        frac, chars = _dup_fraction(paras)
        if c.max_dup_para_frac is not None and frac > c.max_dup_para_frac:
            return "max_dup_para_frac"
        if c.max_dup_para_char_frac is not None and chars > c.max_dup_para_char_frac:
            return "max_dup_para_char_frac"
    for k, limit in c.max_top_ngram_char_frac:
        if _top_ngram_frac(words, k) > limit:
            return f"max_top_{k}gram_char_frac"
    for k, limit in c.max_dup_ngram_char_frac:
        if _dup_ngram_frac(words, k) > limit:
            return f"max_dup_{k}gram_char_frac"
    return None
