"""Credential recognizers: AWS access key ids, GitHub and Slack tokens, PEM private keys, JWTs, and generic
``api_key = ...`` / ``Bearer ...`` assignments whose value has high entropy.

The formats follow the vendors' own documentation and the rules of gitleaks and detect-secrets (whose entropy
threshold idea the generic rule takes: a value is a secret when its Shannon entropy is at least ``min_entropy``
bits per character and it mixes character classes, which keeps ``password = changeme`` out).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from safety.detectors import Accepted, Scanner, Span, find_all, shannon_entropy

KINDS = ("aws_access_key_id", "github_token", "slack_token", "private_key", "jwt", "generic_secret")

AWS = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])")
GITHUB = re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{82})(?!\w)")
SLACK = re.compile(r"(?<![\w-])(?:xox[abposr]-[0-9A-Za-z-]{10,250}|xapp-\d-[0-9A-Za-z-]{10,250}"
                   r"|https://hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32})(?![\w-])")
# The header alone is enough to flag; the base64 body and the footer, when there, belong to the same span.
PEM = re.compile(r"-----BEGIN(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----(?:\s+[A-Za-z0-9+/=]{1,80})*"
                 r"(?:\s+-----END(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----)?")
JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{2,200}\.eyJ[A-Za-z0-9_-]{2,4000}\.[A-Za-z0-9_-]{0,1000}(?![\w-])")
_KEY = r"(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|credentials?|auth[_-]?key|access[_-]?key)"
GENERIC = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9_.-]{0,32}" + _KEY + r"[A-Za-z0-9_.-]{0,32}[\"']?\s{0,4}"
                     r"(?::=|=>|:|=)\s{0,4}[\"']?(?P<value>[A-Za-z0-9_\-+/=.~]{16,200})", re.IGNORECASE)
BEARER = re.compile(r"(?<![A-Za-z0-9])bearer\s{1,4}(?P<value>[A-Za-z0-9_\-+/=.~]{16,1000})", re.IGNORECASE)


def _b64json(part: str) -> object:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _jwt(m: re.Match[str], label: str) -> Accepted:
    try:
        header = _b64json(m.group().split(".")[0])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return (m.start(), m.end(), label) if isinstance(header, dict) and "alg" in header else None


def _high_entropy(min_entropy: float) -> object:
    def check(m: re.Match[str], label: str) -> Accepted:
        value = m.group("value")
        classes = sum(bool(re.search(c, value)) for c in ("[a-z]", "[A-Z]", "[0-9]", r"[_\-+/=.~]"))
        if classes < 2 or shannon_entropy(value) < min_entropy:
            return None
        return m.start("value"), m.end("value"), label

    return check


def secret_scanners(kinds: tuple[str, ...] = KINDS, min_entropy: float = 4.0) -> tuple[Scanner, ...]:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown secret kinds {unknown}; expected some of {', '.join(KINDS)}")
    generic = _high_entropy(min_entropy)
    table = {
        "aws_access_key_id": (Scanner(AWS, "AWS_ACCESS_KEY_ID"),),
        "github_token": (Scanner(GITHUB, "GITHUB_TOKEN"),),
        "slack_token": (Scanner(SLACK, "SLACK_TOKEN"),),
        "private_key": (Scanner(PEM, "PRIVATE_KEY"),),
        "jwt": (Scanner(JWT, "JWT", _jwt),),
        "generic_secret": (Scanner(GENERIC, "GENERIC_SECRET", generic),  # type: ignore[arg-type]
                           Scanner(BEARER, "GENERIC_SECRET", generic)),  # type: ignore[arg-type]
    }
    return tuple(s for k in kinds for s in table[k])


def find_secrets(text: str, kinds: tuple[str, ...] = KINDS, min_entropy: float = 4.0) -> list[Span]:
    """Every credential in ``text``: ``[Span(start, end, "GITHUB_TOKEN"), ...]`` sorted by position."""
    return find_all(secret_scanners(kinds, min_entropy), text)
