"""Personal data recognizers: email, phone, credit_card, iban, us_ssn, ipv4, ipv6, url.

Patterns find candidates; checksums decide where a format has one, as Microsoft Presidio's predefined recognizers
do: the Luhn check for card numbers (ISO/IEC 7812), ISO 13616 mod-97 and the national formats for IBANs, the SSA's
reserved ranges for US social security numbers (all three from python-stdnum), and the stdlib ``ipaddress`` for IP
addresses. Every pattern is bounded or ends at a character class boundary, so it stays local
(see :mod:`safety.detectors`).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.us import ssn as _ssn

from safety.detectors import Accepted, Scanner, Span, find_all

ENTITIES = ("email", "phone", "credit_card", "iban", "us_ssn", "ipv4", "ipv6", "url")

# At most 64 + 1 + 4 * 41 + 24 = 253 characters (RFC 5321 allows 254), so max_entity_chars = 256 covers any.
EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?\.){1,4}"
                   r"[A-Za-z]{2,24}(?![\w-])")
# International numbers need their '+'; without it, the North American 3-3-4 form, with or without the area code
# in parentheses, or a national number with its trunk '0' (020 7946 0958). Bare digit runs, and digit groups
# inside a longer run of groups (an IBAN's, a card's), are left alone.
PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                   r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\1\d{4}|0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4})"
                   r"(?![\w-]|[ .-]\d)")
CARD = re.compile(r"(?<![\d.-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}|\d{4}([ -])\d{6}\2\d{4,5})(?![\d])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
                  r"(?:%[A-Za-z0-9_.]{1,16})?(?![\w:]|\.\d)")
URL = re.compile(r"(?<![\w@/.])(?:(?:https?|ftp)://|www\.)[^\s<>\"'`{}|\\^]{2,2048}")

_TRAILING = ".,;:!?'\")]}*"


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _phone(m: re.Match[str], label: str) -> Accepted:
    text = m.group()
    if not 10 <= len(_digits(text)) <= 15:
        return None
    return m.start(), m.end(), label


def _card(m: re.Match[str], label: str) -> Accepted:
    d = _digits(m.group())
    return (m.start(), m.end(), label) if 13 <= len(d) <= 19 and _luhn.is_valid(d) else None


def _iban_ok(m: re.Match[str], label: str) -> Accepted:
    # A spaced IBAN may be followed by an upper-case word the pattern took in: drop trailing groups until valid.
    text = m.group()
    while True:
        if _iban.is_valid(text):
            return m.start(), m.start() + len(text), label
        if " " not in text:
            return None
        text = text.rsplit(" ", 1)[0]


def _ssn_ok(m: re.Match[str], label: str) -> Accepted:
    return (m.start(), m.end(), label) if _ssn.is_valid(_digits(m.group())) else None


def _ip(version: int) -> object:
    def check(m: re.Match[str], label: str) -> Accepted:
        text = m.group()
        try:
            ipaddress.ip_address(text) if version == 4 else ipaddress.IPv6Address(text)
        except ValueError:
            return None
        if version == 6 and not re.search(r"[0-9A-Fa-f]", text.split("%")[0]):
            return None  # '::' alone is more often C++ than an address
        return m.start(), m.end(), label

    return check


def _url(m: re.Match[str], label: str) -> Accepted:
    text = m.group()
    # Trailing punctuation belongs to the sentence, except a ')' that closes a '(' inside the URL (Wikipedia links).
    while text and text[-1] in _TRAILING and not (text[-1] == ")" and text.count("(") >= text.count(")")):
        text = text[:-1]
    parts = urlsplit(text if "://" in text else "http://" + text)
    host = parts.hostname or ""
    if not (host == "localhost" or "." in host or ":" in host):
        return None
    return m.start(), m.start() + len(text), label


_SCANNERS = {
    "email": Scanner(EMAIL, "EMAIL"),
    "phone": Scanner(PHONE, "PHONE", _phone),
    "credit_card": Scanner(CARD, "CREDIT_CARD", _card),
    "iban": Scanner(IBAN, "IBAN", _iban_ok),
    "us_ssn": Scanner(SSN, "US_SSN", _ssn_ok),
    "ipv4": Scanner(IPV4, "IPV4", _ip(4)),  # type: ignore[arg-type]
    "ipv6": Scanner(IPV6, "IPV6", _ip(6)),  # type: ignore[arg-type]
    "url": Scanner(URL, "URL", _url),
}


def pii_scanners(entities: tuple[str, ...] = ENTITIES) -> tuple[Scanner, ...]:
    unknown = [e for e in entities if e not in _SCANNERS]
    if unknown:
        raise ValueError(f"unknown PII entities {unknown}; expected some of {', '.join(ENTITIES)}")
    return tuple(_SCANNERS[e] for e in entities)


def find_pii(text: str, entities: tuple[str, ...] = ENTITIES) -> list[Span]:
    """Every PII entity in ``text``: ``[Span(start, end, "EMAIL"), ...]`` sorted by position."""
    return find_all(pii_scanners(entities), text)


def normalize(label: str, value: str) -> str:
    """A canonical form of an entity's text, so that '+1 (555) 123-4567' and '15551234567' compare equal."""
    if label in ("PHONE", "CREDIT_CARD", "US_SSN"):
        return _digits(value)
    if label == "IBAN":
        return _iban.compact(value)
    if label in ("IPV4", "IPV6"):
        return str(ipaddress.ip_address(value.split("%")[0]))
    return value.lower()
