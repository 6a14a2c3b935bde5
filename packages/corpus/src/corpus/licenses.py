"""License tagging with SPDX identifiers (https://spdx.org/licenses/).

Where a document's license comes from, by precedence: an ``SPDX-License-Identifier:`` line in its first 4 KiB
(the REUSE convention, https://reuse.software/spec/), then a ``license`` field of its JSONL record (or of the
record's ``metadata``), then the nearest ``LICENSE``/``LICENCE``/``COPYING`` file in its directory or a parent,
else ``NOASSERTION`` (SPDX's word for "not known"). Expressions are validated and normalised with
``license-expression``'s SPDX licensing (so ``mit`` becomes ``MIT``); license *texts* are recognised by the
phrases each license is written with.
"""

from __future__ import annotations

import functools
import re

NOASSERTION = "NOASSERTION"
_HEADER = re.compile(r"SPDX-License-Identifier:\s*([^\n*#]+?)\s*(?:\*/|-->|#|$)", re.MULTILINE)
_LICENSE_FILE = re.compile(r"^(licen[cs]e|copying|unlicense)([-._].*)?$", re.IGNORECASE)

# (SPDX id, phrases that must all appear in the lower-cased, whitespace-collapsed text); first match wins, so the
# GPL family (which other licenses' texts mention, e.g. Python's "GPL-compatible") comes last.
_TEXTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("PSF-2.0", ("python software foundation", "license agreement")),
    ("BSL-1.0", ("boost software license - version 1.0",)),
    ("Unlicense", ("this is free and unencumbered software released into the public domain",)),
    ("CC0-1.0", ("cc0 1.0 universal",)),
    ("CC-BY-SA-4.0", ("attribution-sharealike 4.0 international",)),
    ("CC-BY-4.0", ("attribution 4.0 international",)),
    ("ISC", ("permission to use, copy, modify, and/or distribute this software for any purpose",)),
    ("MIT", ("permission is hereby granted, free of charge, to any person obtaining a copy",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("AGPL-3.0-only", ("gnu affero general public license", "version 3")),
    ("LGPL-3.0-only", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1-only", ("gnu lesser general public license", "version 2.1")),
    ("GPL-3.0-only", ("gnu general public license", "version 3")),
    ("GPL-2.0-only", ("gnu general public license", "version 2")),
)


def is_license_file(name: str) -> bool:
    return bool(_LICENSE_FILE.match(name))


def identify_license_text(text: str) -> str:
    """SPDX id of a license text (a LICENSE file), or NOASSERTION."""
    flat = " ".join(text.lower().split())
    for spdx, phrases in _TEXTS:
        if all(p in flat for p in phrases):
            if spdx.endswith("-only") and "any later version" in flat:
                return spdx.replace("-only", "-or-later")
            return spdx
    return NOASSERTION


@functools.lru_cache(maxsize=1024)
def normalize_expression(expr: str) -> str | None:
    """The SPDX-normalised form of a license expression, or None when it is not a valid SPDX expression."""
    from license_expression import ExpressionError, get_spdx_licensing

    expr = expr.strip()
    if not expr:
        return None
    if expr.upper() == NOASSERTION:
        return NOASSERTION
    licensing = _spdx()
    try:
        info = licensing.validate(expr, strict=False)
    except ExpressionError:
        return None
    if info.errors or info.invalid_symbols:
        return None
    return info.normalized_expression or get_spdx_licensing().parse(expr).render()


@functools.cache
def _spdx():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def header_license(text: str) -> str | None:
    """The license of an ``SPDX-License-Identifier:`` line near the top of ``text``, if valid."""
    m = _HEADER.search(text[:4096])
    return normalize_expression(m.group(1)) if m else None
