"""PII redaction: e-mail addresses, phone numbers, IP addresses (v4 and v6) and payment-card numbers.

Each kind is found by a candidate regex and then validated, which keeps false positives on code and numbers low:
IP addresses with the standard library's :mod:`ipaddress`, phone numbers with Google's libphonenumber
(``phonenumbers.is_valid_number``, default region configurable; a candidate needs separators, a ``+`` or
parentheses, so bare digit runs are left alone), card numbers with the Luhn checksum (ISO/IEC 7812-1) and a
major-network first digit (3-6). Matches become markers (``<EMAIL>``, ``<PHONE_NUMBER>``, ``<IP_ADDRESS>``,
``<CARD_NUMBER>``) and are counted per kind. The approach follows the regex + validation redaction of BigScience
ROOTS (Laurençon et al. 2022) and Dolma (Soldaini et al. 2024).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from specs.errors import ConfigError, suggest

MARKERS = {"email": "<EMAIL>", "phone": "<PHONE_NUMBER>", "ipv4": "<IP_ADDRESS>", "ipv6": "<IP_ADDRESS>",
           "card": "<CARD_NUMBER>"}
KINDS = ("email", "ipv6", "ipv4", "card", "phone")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")
_PHONE = re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-]|\.\d)")


_DIGIT = re.compile(r"\d")
_TRIGGERS: dict[str, Callable[[str, bool], bool]] = {
    "email": lambda s, d: "@" in s,
    "ipv6": lambda s, d: "::" in s or s.count(":") >= 7,
    "ipv4": lambda s, d: d and s.count(".") >= 3,
    "card": lambda s, d: d,
    "phone": lambda s, d: d,
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _is_ipv6(s: str) -> bool:
    groups = [g for g in s.split(":") if g]
    # Python slices ('x[1::2]') parse as IPv6; demand 3+ groups, or 2 with one of 3+ hex digits (fe80::1).
    if len(groups) < 2 or (len(groups) == 2 and max(map(len, groups)) < 3):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _is_card(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "3456" and len(set(digits)) > 1 and luhn_ok(digits)


def check_phone_region(region: str, name: str = "phone_region") -> None:
    """ConfigError unless ``region`` is a region libphonenumber knows (``phonenumbers.SUPPORTED_REGIONS``: ISO
    3166-1 alpha-2 codes in capitals, such as US or GB). ``name`` is the field path in the error."""
    from phonenumbers import SUPPORTED_REGIONS

    if region not in SUPPORTED_REGIONS:
        raise ConfigError(name, f"unknown region {region!r}{suggest(str(region).upper(), SUPPORTED_REGIONS)}; "
                          "expected a two-letter region code that phonenumbers knows, e.g. US, GB, DE, FR, IN, JP, BR "
                          f"({len(SUPPORTED_REGIONS)} in all: phonenumbers.SUPPORTED_REGIONS)")


class PiiRedactor:
    """Callable: ``text -> (redacted_text, Counter(kind -> count))``."""

    def __init__(self, *, phone_region: str = "US", kinds: tuple[str, ...] = KINDS) -> None:
        import phonenumbers

        check_phone_region(phone_region)
        self._pn = phonenumbers
        self.phone_region = phone_region
        checks: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
            "email": (_EMAIL, lambda s: True), "ipv6": (_IPV6, _is_ipv6), "ipv4": (_IPV4, _is_ipv4),
            "card": (_CARD, _is_card), "phone": (_PHONE, self._is_phone)}
        self._steps = [(k, *checks[k]) for k in KINDS if k in kinds]

    def _is_phone(self, s: str) -> bool:
        digits = sum(c.isdigit() for c in s)
        if not 7 <= digits <= 15:
            return False
        try:
            num = self._pn.parse(s, self.phone_region)
        except self._pn.NumberParseException:
            return False
        return self._pn.is_valid_number(num)

    def __call__(self, text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        # No kind spans a newline, so each line only meets the patterns whose trigger character it has;
        # most lines of code and prose have none, which is what makes this fast.
        lines = text.split("\n")
        for i, line in enumerate(lines):
            has_digit = _DIGIT.search(line) is not None
            if not (has_digit or "@" in line or ":" in line):
                continue
            new = line
            for kind, pattern, ok in self._steps:
                if not _TRIGGERS[kind](new, has_digit):
                    continue

                def repl(m: re.Match[str], kind: str = kind, ok: Callable[[str], bool] = ok) -> str:
                    if ok(m.group(0)):
                        counts[kind] += 1
                        return MARKERS[kind]
                    return m.group(0)

                new = pattern.sub(repl, new)
            lines[i] = new
        return "\n".join(lines), counts
