"""SPDX 2.3 JSON software bill of materials for a model release and the Python environment that built it.

Reference: SPDX Specification 2.3 (https://spdx.github.io/spdx-spec/v2.3/), JSON serialisation; package URLs per
the purl spec's ``pkg:pypi`` type. The document describes one root package (the model release) that CONTAINS the
given artifacts as files (SHA1 + SHA256, package verification code per section 7.9), and lists every installed
distribution of the running interpreter (importlib.metadata) as a package that is a BUILD_DEPENDENCY_OF it.

Reproducible: with ``SOURCE_DATE_EPOCH`` set the creation time is fixed, packages/files/relationships are sorted
and the document namespace is a UUIDv5 of the content, so the same inputs give byte-identical output.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import platform
import re
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from governance import __version__
from governance._io import digests, existing_files, rel_name, write_atomic
from governance.licenses import declared_license, normalize
from specs.errors import ConfigError

NOASSERTION = "NOASSERTION"
TOOL = f"Tool: lmstack-governance-{__version__}"
ROOT_ID = "SPDXRef-Package-model"
DEFAULT_NAMESPACE_BASE = "https://spdx.org/spdxdocs"
_ORG_WORDS = re.compile(
    r"\b(inc|llc|ltd|gmbh|corp|corporation|foundation|team|developers|authors|contributors|project|organi[sz]ation"
    r"|group|community|labs?|university|institute|company|maintainers|core|software)\b", re.IGNORECASE)
_TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".dot", ".csv", ".jsonl", ".sha256", ".pem", ".py"}


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """One installed Python distribution as the SBOM records it."""

    name: str
    version: str
    license: str | None  # SPDX expression, None when unknown
    license_source: str  # 'License-Expression' | 'License' | 'classifiers' | ''
    supplier: str | None  # SPDX actor string ('Person: x (e)' / 'Organization: x'), None when unknown
    summary: str | None = None
    homepage: str | None = None

    @property
    def purl(self) -> str:
        # purl pypi rules: lowercase, '_' -> '-'; the version is percent-encoded ('2.13.0+cpu' -> '2.13.0%2Bcpu').
        return f"pkg:pypi/{canonical_name(self.name)}@{quote(self.version, safe='')}"


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def source_date() -> datetime:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org) as a UTC datetime, else now, to the second."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        return datetime.fromtimestamp(int(raw), timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ConfigError("SOURCE_DATE_EPOCH",
                          f"expected an integer count of seconds since 1970, got {raw!r}") from None


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _supplier(meta: Any) -> str | None:
    name, addr = "", ""
    for field in ("Maintainer-email", "Author-email"):
        for n, a in email.utils.getaddresses([meta.get(field) or ""]):
            if n or a:
                name, addr = n, a
                break
        if name or addr:
            break
    name = name or meta.get("Maintainer") or meta.get("Author") or ""
    # SPDX actors are 'Type: name (email)'; parentheses, angle brackets and newlines would break that grammar.
    name = re.sub(r"\s+", " ", re.sub(r"[()<>\"]|\S+@\S+", "", name)).strip(" ,")[:200]
    addr = re.sub(r"[()<>\s]", "", addr)
    if not name or name.upper() in {"UNKNOWN", "NONE"}:
        return None
    kind = "Organization" if _ORG_WORDS.search(name) else "Person"
    return f"{kind}: {name} ({addr})" if addr else f"{kind}: {name}"


def _homepage(meta: Any) -> str | None:
    urls = [meta.get("Home-page") or ""]
    urls += [u.split(",", 1)[1].strip() for u in meta.get_all("Project-URL") or []
             if "," in u and u.split(",", 1)[0].strip().lower() in {"homepage", "home", "source", "repository"}]
    for u in urls:
        parts = urlsplit(u.strip())
        if parts.scheme in {"http", "https"} and parts.netloc and not re.search(r"\s", u.strip()):
            return u.strip()
    return None


def scan_environment(path: Sequence[str] | None = None) -> list[Distribution]:
    """Installed distributions visible on ``path`` (default ``sys.path``), first per name wins, sorted by name."""
    seen: dict[str, Distribution] = {}
    found = importlib_metadata.distributions() if path is None else importlib_metadata.distributions(path=list(path))
    for dist in found:
        meta = dist.metadata
        name = meta.get("Name") if meta is not None else None
        if not name or canonical_name(name) in seen:
            continue
        lic, source = declared_license(meta.get("License-Expression"), meta.get("License"),
                                       meta.get_all("Classifier") or [])
        summary = (meta.get("Summary") or "").strip() or None
        seen[canonical_name(name)] = Distribution(
            name=name, version=dist.version or "0", license=lic, license_source=source, supplier=_supplier(meta),
            summary=summary if summary and summary.upper() != "UNKNOWN" else None, homepage=_homepage(meta))
    return sorted(seen.values(), key=lambda d: (canonical_name(d.name), d.version))


def verification_code(sha1s: Iterable[str]) -> str:
    """SPDX 2.3 section 7.9: SHA1 of the ascending-sorted lowercase hex SHA1s of the package's files, concatenated."""
    return hashlib.sha1("".join(sorted(s.lower() for s in sha1s)).encode("ascii")).hexdigest()


def _spdx_id(prefix: str, text: str, taken: set[str]) -> str:
    base = f"{prefix}-{re.sub(r'[^A-Za-z0-9.-]+', '-', text).strip('-') or 'x'}"
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}-{n}"
    taken.add(out)
    return out


def _package(d: Distribution, spdx_id: str) -> dict[str, Any]:
    pkg: dict[str, Any] = {"SPDXID": spdx_id, "name": d.name, "versionInfo": d.version,
                           "supplier": d.supplier or NOASSERTION, "downloadLocation": NOASSERTION,
                           "filesAnalyzed": False}
    if d.homepage:
        pkg["homepage"] = d.homepage
    # A License-Expression is the author's SPDX statement (PEP 639), so we conclude it; guesses from free text or
    # classifiers are only declared, and concluding is left to a reviewer (NOASSERTION).
    pkg["licenseConcluded"] = d.license if d.license_source == "License-Expression" else NOASSERTION
    pkg["licenseDeclared"] = d.license or NOASSERTION
    if d.license:
        pkg["licenseComments"] = f"from distribution metadata field: {d.license_source}"
    pkg["copyrightText"] = NOASSERTION
    if d.summary:
        pkg["summary"] = d.summary
    pkg["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                            "referenceLocator": d.purl}]
    pkg["primaryPackagePurpose"] = "LIBRARY"
    return pkg


def build_sbom(name: str, artifacts: Sequence[str | os.PathLike[str]] = (), *, base_dir: str | os.PathLike[str] = ".",
               created: datetime | None = None, environment: Sequence[Distribution] | None = None,
               version: str | None = None, license: str | None = None,
               namespace_base: str = DEFAULT_NAMESPACE_BASE) -> dict[str, Any]:
    """The SPDX 2.3 document as a dict. File names are relative to ``base_dir`` (where the SBOM is published)."""
    if not name or not name.strip():
        raise ConfigError("sbom.name", "must be a non-empty model name")
    declared = NOASSERTION
    if license:
        declared = normalize(license) or ""
        if not declared:
            raise ConfigError("sbom.license", f"{license!r} is not a valid SPDX license expression (e.g. 'Apache-2.0')")
    files_in = list(dict.fromkeys(p.resolve() for p in existing_files(artifacts)))
    env = scan_environment() if environment is None else list(environment)
    created = created or source_date()
    taken = {"SPDXRef-DOCUMENT", ROOT_ID}

    files = []
    for p in sorted(files_in, key=lambda q: rel_name(q, Path(base_dir))):
        rel = rel_name(p, Path(base_dir))
        h = digests(p)
        files.append({
            "SPDXID": _spdx_id("SPDXRef-File", rel, taken),
            "fileName": rel if rel.startswith("../") else f"./{rel}",
            "checksums": [{"algorithm": "SHA1", "checksumValue": h["sha1"]},
                          {"algorithm": "SHA256", "checksumValue": h["sha256"]}],
            "fileTypes": ["TEXT" if p.suffix.lower() in _TEXT_SUFFIXES else "BINARY"],
            "licenseConcluded": NOASSERTION, "copyrightText": NOASSERTION,
        })
    root: dict[str, Any] = {"SPDXID": ROOT_ID, "name": name}
    if version:
        root["versionInfo"] = version
    root |= {"supplier": NOASSERTION, "downloadLocation": NOASSERTION, "filesAnalyzed": bool(files)}
    if files:
        sha1s = [f["checksums"][0]["checksumValue"] for f in files]
        root["packageVerificationCode"] = {"packageVerificationCodeValue": verification_code(sha1s)}
    root |= {"licenseConcluded": NOASSERTION, "licenseDeclared": declared, "copyrightText": NOASSERTION,
             "primaryPackagePurpose": "OTHER",
             "comment": "model release: exported artifacts and the Python environment that produced them"}
    packages = [root] + [_package(d, _spdx_id("SPDXRef-Package-pypi", f"{d.name}-{d.version}", taken)) for d in env]
    rels = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": ROOT_ID}]
    rels += [{"spdxElementId": ROOT_ID, "relationshipType": "CONTAINS", "relatedSpdxElement": f["SPDXID"]}
             for f in files]
    rels += [{"spdxElementId": p["SPDXID"], "relationshipType": "BUILD_DEPENDENCY_OF", "relatedSpdxElement": ROOT_ID}
             for p in packages[1:]]
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": name,
        "documentNamespace": "",
        "creationInfo": {"created": iso(created), "creators": [TOOL],
                         "comment": f"Python {platform.python_version()} ({sys.implementation.name}) "
                                    f"on {platform.system()} {platform.machine()}"},
        "packages": packages, "files": files, "relationships": rels,
    }
    # A namespace must be unique per document; a UUIDv5 of the content is, and it is reproducible.
    digest = hashlib.sha256(dumps(doc).encode("utf-8")).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    doc["documentNamespace"] = f"{namespace_base.rstrip('/')}/{slug}-{uuid.uuid5(uuid.NAMESPACE_URL, digest)}"
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write_sbom(out: str | os.PathLike[str], name: str, artifacts: Sequence[str | os.PathLike[str]] = (),
               **kwargs: Any) -> Path:
    """Build the SBOM with file names relative to ``out``'s directory and write it atomically."""
    doc = build_sbom(name, artifacts, base_dir=Path(out).parent, **kwargs)
    return write_atomic(out, dumps(doc))
