"""The release gate: exit 0 on a good bundle, and every kind of tampering named (all of them, not the first)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from governance.hooks import on_export
from governance.sign import keygen
from governance.verify import EXPECTED, verify


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, module_metadata: dict) -> dict[str, Path]:
    """A signed and an unsigned export bundle, built once through the export hook; tests copy them."""
    root = tmp_path_factory.mktemp("bundles")
    key, pub = keygen(root / "keys")
    out = {"pub": pub, "key": key}
    old = dict(os.environ)
    try:
        os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
        for name, signing in (("signed", str(key)), ("unsigned", None)):
            d = root / name
            d.mkdir()
            (d / "model.onnx").write_bytes(os.urandom(2048))
            (d / "tokenizer.json").write_text('{"vocab": {}}\n')
            os.environ.pop("LMSTACK_SIGNING_KEY", None)
            if signing:
                os.environ["LMSTACK_SIGNING_KEY"] = signing
            on_export(str(d), [str(d / "model.onnx"), str(d / "tokenizer.json")], module_metadata)
            out[name] = d
    finally:
        os.environ.clear()
        os.environ.update(old)
    return out


@pytest.fixture
def signed(bundles, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles["signed"], tmp_path / "signed"))


@pytest.fixture
def unsigned(bundles, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles["unsigned"], tmp_path / "unsigned"))


def _problems(d: Path, pubkey=None, artifacts=("model.onnx", "tokenizer.json")) -> list[str]:
    return verify([d / a for a in artifacts], pubkey=pubkey).problems


def test_good_bundles_pass(cli, signed: Path, unsigned: Path, bundles) -> None:
    rc, stdout, err = cli("verify", signed / "model.onnx", signed / "tokenizer.json", "--pubkey", bundles["pub"])
    assert rc == 0, err
    assert "signature verifies (pinned key)" in stdout and "spdx-tools agrees" in stdout and "DSSE-signed" in stdout
    assert stdout.strip().endswith("verify: all checks passed")
    assert _problems(signed) == [] and _problems(unsigned) == []
    rc, _, err = cli("verify", unsigned / "model.onnx", "--dir", unsigned)
    assert rc == 0, err


@pytest.mark.parametrize("name", EXPECTED)
def test_each_missing_artifact_is_named(signed: Path, name: str) -> None:
    (signed / name).unlink()
    problems = _problems(signed)
    assert f"{name} is missing from {signed}" in problems


def test_all_problems_are_reported_not_just_the_first(cli, signed: Path) -> None:
    (signed / "SBOM.spdx.json").unlink()
    (signed / "RECEIPT.json").unlink()
    (signed / "model.onnx").write_bytes(b"swapped weights")
    rc, stdout, err = cli("verify", signed / "model.onnx")
    assert rc == 1
    fails = [ln for ln in err.splitlines() if ln.startswith("FAIL")]
    assert any("SBOM.spdx.json is missing" in f for f in fails) and any("RECEIPT.json is missing" in f for f in fails)
    assert any("model.onnx: sha256" in f and "CHECKSUMS.sha256" in f for f in fails)
    assert any("model.onnx does not match" in f and "MODEL_CARD.json" in f for f in fails)
    assert f"verify: {len(fails)} problem(s)" in err


def test_modified_artifact_fails_every_record_that_covers_it(signed: Path) -> None:
    (signed / "model.onnx").write_bytes(b"\0" * 2048)
    problems = "\n".join(_problems(signed))
    assert "model.onnx: sha256" in problems  # CHECKSUMS.sha256
    assert "SHA256 of" in problems and "SHA1 of" in problems  # SBOM file checksums
    assert "MODEL_CARD.json" in problems and "sha256 in RECEIPT.json" in problems


def test_edited_checksum_file_breaks_the_signature(signed: Path, bundles) -> None:
    (signed / "model.onnx").write_bytes(b"evil")
    import hashlib

    text = (signed / "CHECKSUMS.sha256").read_text().splitlines()
    text = [f"{hashlib.sha256(b'evil').hexdigest()}  model.onnx" if ln.endswith("  model.onnx") else ln for ln in text]
    (signed / "CHECKSUMS.sha256").write_text("\n".join(text) + "\n")
    problems = _problems(signed, bundles["pub"])
    assert "CHECKSUMS.sha256.sig: Ed25519 signature over CHECKSUMS.sha256 does not verify" in problems
    assert not any(p.startswith("model.onnx: sha256") for p in problems)  # the checksum itself now "matches"


def test_corrupt_signature_and_wrong_key(signed: Path, tmp_path: Path) -> None:
    sig = signed / "CHECKSUMS.sha256.sig"
    sig.write_bytes(bytes([sig.read_bytes()[0] ^ 1]) + sig.read_bytes()[1:])
    assert any("does not verify" in p for p in _problems(signed))
    other_key, other_pub = keygen(tmp_path / "other")
    problems = _problems(signed, other_pub)
    assert any("CHECKSUMS.sha256.sig" in p and "does not verify" in p for p in problems)
    assert any(p.startswith("RECEIPT.json: DSSE signature does not verify") for p in problems)


def test_signed_bundle_without_a_public_key(signed: Path) -> None:
    (signed / "CHECKSUMS.sha256.pub.pem").unlink()
    problems = _problems(signed)
    assert any("no public key to check it" in p and p.startswith("CHECKSUMS.sha256.sig") for p in problems)
    assert any(p.startswith("RECEIPT.json is DSSE-signed but there is no public key") for p in problems)


def test_pinned_key_requires_signatures(unsigned: Path, bundles) -> None:
    problems = _problems(unsigned, bundles["pub"])
    assert any("CHECKSUMS.sha256.sig is missing" in p for p in problems)
    assert any("RECEIPT.json is not signed" in p for p in problems)


def test_tampered_receipt_payload(signed: Path, bundles) -> None:
    env = json.loads((signed / "RECEIPT.json").read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["git"] = {"commit": "f" * 40, "dirty": False}
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    (signed / "RECEIPT.json").write_text(json.dumps(env))
    problems = _problems(signed, bundles["pub"])
    assert any(p.startswith("RECEIPT.json: DSSE signature does not verify") for p in problems)


def test_invalid_sbom_is_named_by_our_checks_and_spdx_tools(unsigned: Path) -> None:
    doc = json.loads((unsigned / "SBOM.spdx.json").read_text())
    del doc["dataLicense"]
    doc["packages"][0]["packageVerificationCode"]["packageVerificationCodeValue"] = "0" * 40
    doc["relationships"].append({"spdxElementId": "SPDXRef-Package-model", "relationshipType": "CONTAINS",
                                 "relatedSpdxElement": "SPDXRef-File-ghost"})
    doc["files"] = [f for f in doc["files"] if "tokenizer" not in f["fileName"]]
    (unsigned / "SBOM.spdx.json").write_text(json.dumps(doc))
    problems = _problems(unsigned)
    joined = "\n".join(problems)
    assert "SBOM dataLicense is None, expected 'CC0-1.0'" in problems
    assert "packageVerificationCode 0000000000000000000000000000000000000000 does not match" in joined
    assert "refers to unknown element SPDXRef-File-ghost" in joined
    assert "tokenizer.json is not listed as a file in SBOM.spdx.json" in problems
    assert any(p.startswith("spdx-tools") for p in problems)
    assert any("SBOM.spdx.json: sha256" in p for p in problems)  # and the checksum file notices the edit


def test_sbom_not_json_and_card_without_sections(unsigned: Path) -> None:
    (unsigned / "SBOM.spdx.json").write_text("{")
    card = unsigned / "MODEL_CARD.md"
    card.write_text(card.read_text().replace("## Limitations", "## Caveats").replace("license:", "licence:"))
    problems = _problems(unsigned)
    assert any(p.startswith("SBOM.spdx.json is not valid JSON") for p in problems)
    assert "MODEL_CARD.md: missing sections Limitations" in problems
    assert "MODEL_CARD.md: missing YAML front matter with a 'license' field" in problems


def test_uncovered_artifact_and_malformed_checksum_line(unsigned: Path) -> None:
    (unsigned / "extra.bin").write_bytes(b"new")
    with (unsigned / "CHECKSUMS.sha256").open("a") as f:
        f.write("not-a-hash  whatever\n")
    problems = _problems(unsigned, artifacts=("model.onnx", "extra.bin"))
    assert "extra.bin is not covered by CHECKSUMS.sha256" in problems
    assert "extra.bin is not listed as a file in SBOM.spdx.json" in problems
    assert "extra.bin is not a subject of RECEIPT.json" in problems
    assert any("is not '<sha256 hex>  <file name>'" in p for p in problems)


def test_missing_artifact_and_directory(cli, tmp_path: Path, run_module) -> None:
    r = run_module("verify", tmp_path / "artifacts" / "model.onnx")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "artifacts").mkdir()
    r = run_module("verify", tmp_path / "artifacts" / "model.onnx")
    assert r.returncode == 1 and "artifact" in r.stderr and r.stderr.count("FAIL") == 1 + len(EXPECTED)
    rc, _, err = cli("verify", tmp_path / "artifacts" / "model.onnx", "--pubkey", tmp_path / "nokey.pem")
    assert rc == 2 and "public key file not found" in err


def test_dir_that_is_a_file_is_named_as_such(run_module, art: Path) -> None:
    somefile = art / "tokenizer.json"
    r = run_module("verify", art / "model.onnx", "--dir", somefile)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"FAIL  artifact directory {somefile} is not a directory" in r.stderr and "does not exist" not in r.stderr
    assert sorted(p.name for p in art.iterdir()) == ["model.onnx", "tokenizer.json"]
