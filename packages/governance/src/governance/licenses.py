"""Map a Python distribution's license metadata to an SPDX license expression, or None when unknown.

Sources in order of authority (Core Metadata 2.4, PEP 639): ``License-Expression`` (already SPDX), a short
``License`` field that parses as an SPDX expression (``MIT``, ``Apache-2.0``) or matches a common spelling,
then ``License ::`` trove classifiers that name exactly one SPDX license. Ambiguous classifiers ("BSD License",
"Academic Free License") map to nothing: an SBOM says NOASSERTION rather than guess. Expressions are checked and
normalised with ``license-expression``, the same library spdx-tools validates with, so whatever we emit is an
SPDX id the validator knows.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from license_expression import ExpressionError, get_spdx_licensing

# Trove classifier suffix -> SPDX id, for the classifiers that name one license version unambiguously.
# "Apache Software License" carries no version, but every current release under it is Apache-2.0.
CLASSIFIERS: dict[str, str] = {
    "OSI Approved :: MIT License": "MIT",
    "OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "OSI Approved :: Apache Software License": "Apache-2.0",
    "OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "OSI Approved :: Mozilla Public License 1.1 (MPL 1.1)": "MPL-1.1",
    "OSI Approved :: ISC License (ISCL)": "ISC",
    "OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0-only",
    "OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "OSI Approved :: zlib/libpng License": "Zlib",
    "OSI Approved :: Eclipse Public License 1.0 (EPL-1.0)": "EPL-1.0",
    "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "OSI Approved :: Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "OSI Approved :: Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "OSI Approved :: Universal Permissive License (UPL)": "UPL-1.0",
    "OSI Approved :: European Union Public Licence 1.2 (EUPL 1.2)": "EUPL-1.2",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}

# Free-text ``License:`` spellings seen in the wild that are not SPDX ids themselves.
ALIASES: dict[str, str] = {
    "apache 2.0": "Apache-2.0", "apache 2": "Apache-2.0", "apache-2": "Apache-2.0", "apache2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0", "apache software license 2.0": "Apache-2.0",
    "bsd 3-clause": "BSD-3-Clause", "bsd-3-clause license": "BSD-3-Clause", "3-clause bsd": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause", "modified bsd": "BSD-3-Clause", "bsd-3": "BSD-3-Clause",
    "bsd 2-clause": "BSD-2-Clause", "2-clause bsd": "BSD-2-Clause", "simplified bsd": "BSD-2-Clause",
    "mit license": "MIT", "the mit license": "MIT", "expat": "MIT", "psf": "PSF-2.0", "psfl": "PSF-2.0",
    "psf license": "PSF-2.0", "mpl 2.0": "MPL-2.0", "mpl-2": "MPL-2.0", "gplv3": "GPL-3.0-only",
    "gplv2": "GPL-2.0-only", "lgplv3": "LGPL-3.0-only", "isc license": "ISC", "public domain": "Unlicense",
}


@functools.cache
def _licensing():  # the index is loaded once per process; it is immutable
    return get_spdx_licensing()


def normalize(expression: str) -> str | None:
    """The canonical SPDX form of ``expression`` ('mit or apache-2.0' -> 'MIT OR Apache-2.0'), or None."""
    text = expression.strip()
    if not text or "\n" in text or len(text) > 200:
        return None
    try:
        parsed = _licensing().parse(text, validate=True, strict=True)
    except ExpressionError:  # unknown ids, bad characters and syntax errors alike
        return None
    return parsed.render() if parsed is not None else None


def from_classifiers(classifiers: Iterable[str]) -> str | None:
    """SPDX expression from ``License ::`` classifiers; several mean the user may choose, so they join with OR."""
    ids: list[str] = []
    for c in classifiers:
        spdx_id = CLASSIFIERS.get(c.removeprefix("License ::").strip())
        if spdx_id and spdx_id not in ids:
            ids.append(spdx_id)
    return normalize(" OR ".join(ids)) if ids else None


def declared_license(expression: str | None, license_field: str | None,
                     classifiers: Iterable[str]) -> tuple[str | None, str]:
    """``(spdx_expression_or_None, source)`` with source one of 'License-Expression', 'License', 'classifiers', ''."""
    if expression and (norm := normalize(expression)):
        return norm, "License-Expression"
    if license_field:
        field = license_field.strip()
        key = re.sub(r"\s+", " ", field.lower())
        alias = ALIASES.get(key) or ALIASES.get(key.removesuffix(" license"))
        norm = normalize(field) or (normalize(alias) if alias else None)
        if norm:
            return norm, "License"
    norm = from_classifiers(classifiers)
    if norm:
        return norm, "classifiers"
    return None, ""
