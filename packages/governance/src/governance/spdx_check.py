"""Check an SPDX 2.3 JSON SBOM: required fields, references, verification codes and file checksums on disk.

Reference: SPDX Specification 2.3, sections 6 (document creation), 7 (package), 8 (file), 11 (relationships) and
7.9 (package verification code). Our own checks always run and return every problem found, not just the first;
when ``spdx-tools`` (the SPDX project's reference parser/validator) is importable its messages are added too.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from governance._io import digests
from governance.sbom import verification_code

_ID = re.compile(r"^SPDXRef-[A-Za-z0-9.-]+$")
_CREATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_ACTOR = re.compile(r"^(Tool|Person|Organization): \S")
_HEX_LEN = {"SHA1": 40, "SHA224": 56, "SHA256": 64, "SHA384": 96, "SHA512": 128, "MD5": 32}
_HASHLIB = {"SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512",
            "MD5": "md5"}
MAX_TOOL_MESSAGES = 25


def _checksum_problems(where: str, checksums: Any, need_sha1: bool) -> list[str]:
    if not isinstance(checksums, list) or not checksums:
        return [f"{where}: checksums missing"]
    out, algos = [], set()
    for c in checksums:
        algo, value = (c.get("algorithm"), c.get("checksumValue")) if isinstance(c, dict) else (None, None)
        algos.add(algo)
        n = _HEX_LEN.get(str(algo))
        if n and not (isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{n}}}", value)):
            out.append(f"{where}: {algo} checksum {value!r} is not {n} lowercase hex digits")
    if need_sha1 and "SHA1" not in algos:
        out.append(f"{where}: a SHA1 checksum is required (SPDX 2.3 section 8.4)")
    return out


def structural_problems(doc: Any, base_dir: Path) -> list[str]:
    """Every problem our own checks find in ``doc``; file names resolve against ``base_dir``."""
    if not isinstance(doc, dict):
        return ["SBOM is not a JSON object"]
    p: list[str] = []
    expect = {"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT"}
    p += [f"SBOM {k} is {doc.get(k)!r}, expected {v!r}" for k, v in expect.items() if doc.get(k) != v]
    if not isinstance(doc.get("name"), str) or not doc["name"].strip():
        p.append("SBOM name is missing")
    ns = doc.get("documentNamespace")
    if not isinstance(ns, str) or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$", ns) or "#" in ns:
        p.append(f"SBOM documentNamespace {ns!r} is not an absolute URI without '#'")
    ci = doc.get("creationInfo") if isinstance(doc.get("creationInfo"), dict) else {}
    if not _CREATED.match(str(ci.get("created", ""))):
        p.append(f"SBOM creationInfo.created {ci.get('created')!r} is not YYYY-MM-DDThh:mm:ssZ")
    creators = ci.get("creators")
    if not isinstance(creators, list) or not creators or not all(_ACTOR.match(str(c)) for c in creators):
        p.append(f"SBOM creationInfo.creators {creators!r} must list 'Tool: ...', 'Person: ...' or 'Organization: ...'")

    ids: set[str] = {"SPDXRef-DOCUMENT"}
    packages = doc.get("packages") or []
    files = doc.get("files") or []
    if not isinstance(packages, list) or not isinstance(files, list):
        return [*p, "SBOM packages/files must be lists"]
    for kind, items in (("package", packages), ("file", files)):
        for i, el in enumerate(items):
            sid = el.get("SPDXID") if isinstance(el, dict) else None
            if not isinstance(sid, str) or not _ID.match(sid):
                p.append(f"SBOM {kind} #{i}: SPDXID {sid!r} is not SPDXRef-[A-Za-z0-9.-]+")
            elif sid in ids:
                p.append(f"SBOM {kind} #{i}: duplicate SPDXID {sid}")
            ids.add(str(sid))
    for pkg in (x for x in packages if isinstance(x, dict)):
        where = f"SBOM package {pkg.get('SPDXID')}"
        p += [f"{where}: {k} missing" for k in ("name", "downloadLocation") if not pkg.get(k)]
    sha1_of: dict[str, str] = {}
    for f in (x for x in files if isinstance(x, dict)):
        where = f"SBOM file {f.get('fileName', f.get('SPDXID'))}"
        if not f.get("fileName"):
            p.append(f"{where}: fileName missing")
        p += _checksum_problems(where, f.get("checksums"), need_sha1=True)
        sums = {c.get("algorithm"): c.get("checksumValue") for c in f.get("checksums") or [] if isinstance(c, dict)}
        sha1_of[str(f.get("SPDXID"))] = str(sums.get("SHA1", ""))
        path = base_dir / str(f.get("fileName", ""))
        if not f.get("fileName"):
            continue
        if not path.is_file():
            p.append(f"{where}: listed in the SBOM but {path} is missing")
            continue
        algos = [a for a in sums if a in _HASHLIB]
        got = digests(path, [_HASHLIB[a] for a in algos])
        for a in algos:
            if got[_HASHLIB[a]] != sums[a]:
                p.append(f"{where}: {a} of {path} is {got[_HASHLIB[a]][:16]}..., the SBOM says {str(sums[a])[:16]}...")

    rels = doc.get("relationships") or []
    contains: dict[str, list[str]] = {}
    describes = False
    for i, r in enumerate(rels if isinstance(rels, list) else []):
        if not isinstance(r, dict) or not all(r.get(k) for k in ("spdxElementId", "relationshipType",
                                                                  "relatedSpdxElement")):
            p.append(f"SBOM relationship #{i} needs spdxElementId, relationshipType and relatedSpdxElement")
            continue
        for end in (r["spdxElementId"], r["relatedSpdxElement"]):
            if end not in ids and end not in ("NONE", "NOASSERTION") and not str(end).startswith("DocumentRef-"):
                p.append(f"SBOM relationship #{i} refers to unknown element {end}")
        describes |= r["spdxElementId"] == "SPDXRef-DOCUMENT" and r["relationshipType"] == "DESCRIBES"
        if r["relationshipType"] == "CONTAINS":
            contains.setdefault(r["spdxElementId"], []).append(r["relatedSpdxElement"])
    if not describes:
        p.append("SBOM has no 'SPDXRef-DOCUMENT DESCRIBES ...' relationship")
    for pkg in (x for x in packages if isinstance(x, dict)):
        code = (pkg.get("packageVerificationCode") or {}).get("packageVerificationCodeValue")
        if code is None:
            continue
        if pkg.get("filesAnalyzed") is False:
            p.append(f"SBOM package {pkg.get('SPDXID')}: packageVerificationCode needs filesAnalyzed true")
        want = verification_code(sha1_of.get(fid, "") for fid in contains.get(str(pkg.get("SPDXID")), []))
        if code != want:
            p.append(f"SBOM package {pkg.get('SPDXID')}: packageVerificationCode {code} does not match its files' "
                     f"SHA1s (expected {want})")
    return p


def spdx_tools_problems(path: Path) -> list[str] | None:
    """Messages of the spdx-tools parser and validator, or None when spdx-tools is not installed."""
    try:
        parse_anything = importlib.import_module("spdx_tools.spdx.parser.parse_anything")
        validator = importlib.import_module("spdx_tools.spdx.validation.document_validator")
        errors = importlib.import_module("spdx_tools.spdx.parser.error")
    except ImportError:
        return None
    try:
        document = parse_anything.parse_file(str(path))
    except errors.SPDXParsingError as exc:
        return [f"spdx-tools cannot parse the SBOM: {m}" for m in exc.get_messages()[:MAX_TOOL_MESSAGES]]
    except Exception as exc:  # the parser has no total error contract on malformed input; report, don't crash
        return [f"spdx-tools cannot parse the SBOM: {type(exc).__name__}: {exc}"]
    msgs = [m.validation_message for m in validator.validate_full_spdx_document(document)]
    out = [f"spdx-tools: {m}" for m in msgs[:MAX_TOOL_MESSAGES]]
    if len(msgs) > MAX_TOOL_MESSAGES:
        out.append(f"spdx-tools: ... and {len(msgs) - MAX_TOOL_MESSAGES} more validation messages")
    return out


def check_sbom(path: Path, use_spdx_tools: bool = True) -> tuple[dict[str, Any] | None, list[str], bool]:
    """``(document or None, problems, spdx_tools_ran)`` for the SBOM file at ``path``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{path.name} is not valid JSON: {exc}"], False
    problems = structural_problems(doc, path.parent)
    tool = spdx_tools_problems(path) if use_spdx_tools and isinstance(doc, dict) else None
    return (doc if isinstance(doc, dict) else None), problems + (tool or []), tool is not None
