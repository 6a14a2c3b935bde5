"""The release gate: check that a model's governance artifacts exist, agree with the files and verify.

``verify(["artifacts/model.onnx"])`` looks in the artifact's directory (or ``directory``) for SBOM.spdx.json,
CHECKSUMS.sha256, MODEL_CARD.md, MODEL_CARD.json and RECEIPT.json and checks, collecting every problem rather
than stopping at the first: each artifact exists and is covered by the checksums, the SBOM, the card sidecar and
the receipt's subjects; every listed hash matches the file on disk; the Ed25519 signature over CHECKSUMS.sha256
and the DSSE signature of a signed receipt verify; the SBOM is valid SPDX 2.3 (our checks + spdx-tools when
importable); the card has its front matter and sections. The signing key is ``pubkey`` when given (pinned, and
then signatures are required), else the ``CHECKSUMS.sha256.pub.pem`` shipped beside the checksums.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from governance._io import digests, rel_name
from governance.dsse import is_envelope, load_statement, open_envelope
from governance.receipt import STATEMENT_TYPE
from governance.sign import PUB_SUFFIX, SIG_SUFFIX, load_public_key, parse_checksums, verify_signature
from governance.spdx_check import check_sbom
from specs.errors import LmstackError
from specs.modelcard import ModelCard

SBOM, CHECKSUMS, CARD, CARD_JSON, RECEIPT = "SBOM.spdx.json", "CHECKSUMS.sha256", "MODEL_CARD.md", "MODEL_CARD.json", \
    "RECEIPT.json"
EXPECTED = (SBOM, CHECKSUMS, CARD, CARD_JSON, RECEIPT)
CARD_SECTIONS = ("Model Details", "Intended Use", "Training Data", "Evaluation", "Limitations")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sha256(path: Path) -> str:
    return digests(path, ("sha256",))["sha256"]


def _check_checksums(d: Path, names: list[str], key: Ed25519PublicKey | None, pinned: bool, r: Report) -> None:
    path = d / CHECKSUMS
    raw = path.read_bytes()
    entries, bad = parse_checksums(raw.decode("utf-8", errors="replace"))
    r.problems += [f"{CHECKSUMS}: {m}" for m in bad]
    listed = {n for n, _ in entries}
    for name, want in entries:
        f = d / name
        if not f.is_file():
            r.problems.append(f"{CHECKSUMS} lists {name} but it is missing")
        elif (got := _sha256(f)) != want:
            r.problems.append(f"{name}: sha256 {got[:16]}... does not match {CHECKSUMS} ({want[:16]}...)")
    r.problems += [f"{n} is not covered by {CHECKSUMS}" for n in names if n not in listed]
    if entries and not bad:
        r.passed.append(f"{CHECKSUMS}: {len(entries)} files match")
    sig = Path(f"{path}{SIG_SUFFIX}")
    if not sig.is_file():
        if pinned:
            r.problems.append(f"{sig.name} is missing (a public key was given, so a signature is required)")
        return
    if key is None:
        r.problems.append(f"{sig.name} exists but there is no public key to check it "
                          f"(pass --pubkey or ship {CHECKSUMS}{PUB_SUFFIX})")
    elif not verify_signature(key, raw, sig.read_bytes()):
        r.problems.append(f"{sig.name}: Ed25519 signature over {CHECKSUMS} does not verify")
    else:
        r.passed.append(f"{sig.name}: signature verifies ({'pinned key' if pinned else 'bundled key, not pinned'})")


def _check_sbom(d: Path, names: list[str], use_spdx_tools: bool, r: Report) -> None:
    doc, problems, tool_ran = check_sbom(d / SBOM, use_spdx_tools)
    r.problems += problems
    if doc is None:
        return
    in_sbom = {str(f.get("fileName", "")).removeprefix("./") for f in doc.get("files") or [] if isinstance(f, dict)}
    r.problems += [f"{n} is not listed as a file in {SBOM}" for n in names if n not in in_sbom]
    if not problems:
        r.passed.append(f"{SBOM}: valid SPDX 2.3{' (spdx-tools agrees)' if tool_ran else ''}")


def _check_card(d: Path, names: list[str], r: Report) -> None:
    text = (d / CARD).read_text(encoding="utf-8", errors="replace")
    front = None
    if text.startswith("---\n") and (end := text.find("\n---\n", 4)) > 0:
        try:
            front = yaml.safe_load(text[4:end])
        except yaml.YAMLError as exc:
            r.problems.append(f"{CARD}: front matter is not YAML: {exc}")
    if not isinstance(front, dict) or "license" not in front:
        r.problems.append(f"{CARD}: missing YAML front matter with a 'license' field")
    missing = [s for s in CARD_SECTIONS if f"\n## {s}\n" not in text]
    if missing:
        r.problems.append(f"{CARD}: missing sections {', '.join(missing)}")
    if not (d / CARD_JSON).is_file():
        return
    try:
        card = ModelCard.load(d / CARD_JSON)
    except (LmstackError, OSError, ValueError) as exc:
        r.problems.append(f"{CARD_JSON}: not a readable model card: {exc}")
        return
    for name, fh in card.files.items():
        f = d / name
        if not f.is_file():
            r.problems.append(f"{CARD_JSON} lists {name} but it is missing")
        elif f.stat().st_size != fh.bytes or _sha256(f) != fh.sha256:
            r.problems.append(f"{name} does not match the size/sha256 recorded in {CARD_JSON}")
    r.problems += [f"{n} is not described by {CARD_JSON}" for n in names if n not in card.files]
    if not missing and isinstance(front, dict):
        r.passed.append(f"{CARD}: front matter and sections present; {CARD_JSON}: {len(card.files)} files match")


def _check_receipt(d: Path, names: list[str], key: Ed25519PublicKey | None, pinned: bool, r: Report) -> None:
    try:
        doc = json.loads((d / RECEIPT).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        r.problems.append(f"{RECEIPT} is not valid JSON: {exc}")
        return
    signed = is_envelope(doc)
    if signed:
        if key is None:
            r.problems.append(f"{RECEIPT} is DSSE-signed but there is no public key to check it (pass --pubkey)")
        body, problems = open_envelope(doc, key)
        r.problems += [f"{RECEIPT}: {m}" for m in problems]
        doc, err = load_statement(body)
        if err:
            r.problems.append(f"{RECEIPT}: {err}")
            return
    elif pinned:
        r.problems.append(f"{RECEIPT} is not signed (a public key was given, so a DSSE envelope is required)")
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE or not isinstance(doc.get("subject"), list):
        r.problems.append(f"{RECEIPT} is not an in-toto Statement v1 (_type {STATEMENT_TYPE}, subject list)")
        return
    subjects = {}
    for s in doc["subject"]:
        sha = (s.get("digest") or {}).get("sha256") if isinstance(s, dict) else None
        if not sha:
            r.problems.append(f"{RECEIPT}: subject {s!r} has no sha256 digest")
            continue
        subjects[s.get("name")] = sha
        f = d / str(s.get("name"))
        if not f.is_file():
            r.problems.append(f"{RECEIPT}: subject {s.get('name')} is missing")
        elif _sha256(f) != sha:
            r.problems.append(f"{s.get('name')} does not match the sha256 in {RECEIPT}")
    r.problems += [f"{n} is not a subject of {RECEIPT}" for n in names if n not in subjects]
    r.passed.append(f"{RECEIPT}: in-toto Statement with {len(subjects)} subjects{' (DSSE-signed)' if signed else ''}")


def verify(artifacts: Sequence[str | os.PathLike[str]], directory: str | os.PathLike[str] | None = None,
           pubkey: str | os.PathLike[str] | None = None, use_spdx_tools: bool = True) -> Report:
    """Check everything; return a Report listing every problem (empty means the release may ship)."""
    r = Report()
    paths = [Path(a) for a in artifacts]
    d = Path(directory) if directory is not None else (paths[0].parent if paths else Path("."))
    if not d.is_dir():
        r.problems.append(f"artifact directory {d} {'is not a directory' if d.exists() else 'does not exist'}")
        return r
    for p in paths:
        if not p.is_file():
            r.problems.append(f"artifact {p} is missing")
    names = [rel_name(p, d) for p in paths]
    pinned = pubkey is not None
    key = load_public_key(pubkey) if pinned else None
    bundled = d / f"{CHECKSUMS}{PUB_SUFFIX}"
    if key is None and bundled.is_file():
        try:
            key = load_public_key(bundled)
        except LmstackError as exc:
            r.problems.append(f"{bundled.name}: {exc}")
    present = {name: (d / name).is_file() for name in EXPECTED}
    r.problems += [f"{name} is missing from {d}" for name, ok in present.items() if not ok]
    if present[CHECKSUMS]:
        _check_checksums(d, names, key, pinned, r)
    if present[SBOM]:
        _check_sbom(d, names, use_spdx_tools, r)
    if present[CARD]:
        _check_card(d, names, r)
    if present[RECEIPT]:
        _check_receipt(d, names, key, pinned, r)
    return r
