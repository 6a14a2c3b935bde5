"""Text normalisation applied to every document before filtering and dedup.

Unicode NFC (UAX #15: composed forms, so 'é' is one code point however it was typed), newlines unified to
``\\n`` (CRLF and lone CR, plus U+2028/U+2029), a leading byte-order mark removed, and control characters
(Unicode category Cc except tab and newline, e.g. NUL, ESC, DEL) stripped. Trailing whitespace on lines is kept:
it is meaningful in Markdown and code.
"""

from __future__ import annotations

import re
import unicodedata

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")


def normalize(text: str) -> str:
    text = text.removeprefix("\ufeff")
    text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text
