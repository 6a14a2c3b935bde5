"""SBOM: valid under spdx-tools, correct verification code, reproducible, licenses and purls from real metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spdx_tools.spdx.model import ChecksumAlgorithm, RelationshipType
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.spdx_element_utils import calculate_package_verification_code
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from governance.licenses import declared_license, from_classifiers, normalize
from governance.sbom import Distribution, build_sbom, scan_environment, verification_code, write_sbom
from specs.errors import ConfigError


def _parse_valid(path: Path):
    doc = parse_file(str(path))
    messages = validate_full_spdx_document(doc)
    assert [m.validation_message for m in messages] == []
    return doc


def test_sbom_of_this_environment_is_valid_spdx(cli, art: Path) -> None:
    out = art / "SBOM.spdx.json"
    rc, stdout, _ = cli("sbom", "--out", out, "--name", "tiny-model", "--artifacts", art / "model.onnx",
                        art / "tokenizer.json", "--license", "apache-2.0", "--version", "1.2.0")
    assert rc == 0 and "wrote" in stdout
    doc = _parse_valid(out)
    assert doc.creation_info.spdx_version == "SPDX-2.3" and doc.creation_info.name == "tiny-model"
    # every installed distribution is there, with a purl; the ones we know carry their license
    names = {p.name: p for p in doc.packages}
    for dist in ("cryptography", "pyyaml", "lmstack-specs", "lmstack-governance", "spdx-tools"):
        match = [p for n, p in names.items() if n.lower().replace("_", "-") == dist]
        assert match, f"{dist} missing from the SBOM"
        refs = [r.locator for r in match[0].external_references if r.reference_type == "purl"]
        assert refs == [f"pkg:pypi/{dist}@{match[0].version}"]
    gov = next(p for p in doc.packages if p.name == "lmstack-governance")
    assert str(gov.license_declared) == "Apache-2.0"
    root = next(p for p in doc.packages if p.spdx_id == "SPDXRef-Package-model")
    assert str(root.license_declared) == "Apache-2.0" and root.version == "1.2.0" and root.files_analyzed
    # files carry SHA1 + SHA256 matching the bytes, and the verification code agrees with spdx-tools' own algorithm
    import hashlib

    for f in doc.files:
        data = (art / f.name).read_bytes()
        sums = {c.algorithm: c.value for c in f.checksums}
        assert sums[ChecksumAlgorithm.SHA1] == hashlib.sha1(data).hexdigest()
        assert sums[ChecksumAlgorithm.SHA256] == hashlib.sha256(data).hexdigest()
    assert root.verification_code.value == calculate_package_verification_code(doc.files).value
    rels = {(r.spdx_element_id, r.relationship_type, r.related_spdx_element_id) for r in doc.relationships}
    assert ("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-Package-model") in rels
    assert {r[2] for r in rels if r[1] == RelationshipType.CONTAINS} == {f.spdx_id for f in doc.files}
    assert sorted(f.name for f in doc.files) == ["./model.onnx", "./tokenizer.json"]


def test_verification_code_matches_spec_example() -> None:
    # SPDX 2.3 section 7.9: sort the SHA1s, concatenate, SHA1 the result; order of input must not matter
    a, b = "a" * 40, "0" * 40
    import hashlib

    assert verification_code([a, b]) == hashlib.sha1((b + a).encode()).hexdigest() == verification_code([b, a])


def test_byte_identical_with_source_date_epoch(run_module, art: Path, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"sbom{i}" / "SBOM.spdx.json"
        out.parent.mkdir()
        # same artifact, same relative name from both outputs
        (out.parent / "model.onnx").write_bytes((art / "model.onnx").read_bytes())
        r = run_module("sbom", "--out", out, "--name", "m", "--artifacts", out.parent / "model.onnx",
                       env={"SOURCE_DATE_EPOCH": "1600000000"})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    doc = json.loads(outs[0])
    assert doc["creationInfo"]["created"] == "2020-09-13T12:26:40Z"
    # a different content gives a different namespace
    other = build_sbom("m2", [art / "model.onnx"], base_dir=art, environment=[])
    assert other["documentNamespace"] != doc["documentNamespace"]


def _fake_dist(site: Path, name: str, version: str, lines: list[str]) -> None:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    body = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}", *lines]
    (d / "METADATA").write_text("\n".join(body) + "\n\nlong description\n")


def test_scan_environment_reads_licenses_suppliers_and_purls(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "Fake_Pkg", "1.0+cpu", ["License: Apache 2.0", 'Author-email: "Jane Doe" <jane@example.org>'])
    _fake_dist(site, "expr-pkg", "2.0", ["License-Expression: mit OR apache-2.0", "Author: The Expr Developers"])
    _fake_dist(site, "classy", "3.0", ["Classifier: License :: OSI Approved :: MIT License",
                                       "Classifier: License :: OSI Approved :: Apache Software License"])
    _fake_dist(site, "vague", "0.1", ["License: BSD", "Classifier: License :: OSI Approved :: BSD License"])
    dists = {d.name: d for d in scan_environment([str(site)])}
    assert dists["Fake_Pkg"].license == "Apache-2.0" and dists["Fake_Pkg"].license_source == "License"
    assert dists["Fake_Pkg"].supplier == "Person: Jane Doe (jane@example.org)"
    assert dists["Fake_Pkg"].purl == "pkg:pypi/fake-pkg@1.0%2Bcpu"
    assert dists["expr-pkg"].license == "MIT OR Apache-2.0"
    assert dists["expr-pkg"].supplier == "Organization: The Expr Developers"
    assert dists["classy"].license == "MIT OR Apache-2.0" and dists["classy"].license_source == "classifiers"
    assert dists["vague"].license is None  # 'BSD' is ambiguous: NOASSERTION, never a guess
    # and the document built from them validates, with concluded only for a License-Expression
    out = tmp_path / "SBOM.spdx.json"
    out.write_text(json.dumps(build_sbom("m", environment=list(dists.values()))))
    doc = _parse_valid(out)
    by = {p.name: p for p in doc.packages}
    assert str(by["expr-pkg"].license_concluded) == "MIT OR Apache-2.0"
    assert str(by["Fake_Pkg"].license_concluded) == "NOASSERTION" and str(by["vague"].license_declared) == "NOASSERTION"


@pytest.mark.parametrize(("expr", "field", "classifiers", "want"), [
    (None, "MIT", [], "MIT"),
    (None, "The MIT License", [], "MIT"),
    (None, "3-Clause BSD License", [], "BSD-3-Clause"),
    (None, "Copyright (c) 2001\nall rights reserved", ["License :: OSI Approved :: BSD License"], None),
    ("GPL-2.0+", None, [], "GPL-2.0-or-later"),
    ("LicenseRef-Proprietary", None, ["License :: OSI Approved :: ISC License (ISCL)"], "ISC"),
])
def test_declared_license(expr, field, classifiers, want) -> None:
    assert declared_license(expr, field, classifiers)[0] == want


def test_normalize_rejects_non_spdx() -> None:
    assert normalize("Apache License, Version 2.0") is None and normalize("(MIT") is None
    assert from_classifiers(["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"]) == "GPL-3.0-only"


def test_sbom_without_artifacts_validates(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "one", "1", ["License-Expression: MIT"])
    p = write_sbom(tmp_path / "SBOM.spdx.json", "env-only", environment=scan_environment([str(site)]))
    doc = _parse_valid(p)
    assert not doc.files and not next(x for x in doc.packages if x.name == "env-only").files_analyzed


def test_missing_artifact_bad_epoch_and_license_are_clear_errors(cli, art: Path, monkeypatch) -> None:
    out = art / "SBOM.spdx.json"
    rc, _, err = cli("sbom", "--out", out, "--name", "m", "--artifacts", art / "nope.onnx")
    assert rc == 2 and "nope.onnx" in err and "Traceback" not in err and not out.exists()
    rc, _, err = cli("sbom", "--out", out, "--name", "m", "--license", "Apache License 2")
    assert rc == 2 and "not a valid SPDX license expression" in err and not out.exists()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        build_sbom("m", environment=[Distribution(name="x", version="1", license=None, license_source="",
                                                  supplier=None)])
    assert sorted(p.name for p in art.iterdir()) == ["model.onnx", "tokenizer.json"]  # no temp files left behind
