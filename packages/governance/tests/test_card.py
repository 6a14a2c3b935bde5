"""Model card: Hugging Face front matter parses, sections are filled from metadata, the sidecar verifies files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from governance.card import build_card
from specs.modelcard import IntegrityError, ModelCard


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def test_card_from_metadata_and_sbom(cli, art: Path, metadata_file: Path) -> None:
    assert cli("sbom", "--out", art / "SBOM.spdx.json", "--name", "tiny", "--artifacts", art / "model.onnx")[0] == 0
    out = art / "MODEL_CARD.md"
    rc, stdout, _ = cli("card", art / "model.onnx", "--metadata", metadata_file, "--sbom", art / "SBOM.spdx.json",
                        "--out", out, "--license", "Apache-2.0")
    assert rc == 0 and "MODEL_CARD.json" in stdout
    fm, body = _front_matter(out.read_text())
    assert fm["license"] == "apache-2.0" and fm["pipeline_tag"] == "text-generation"
    assert fm["library_name"] == "onnx" and {"lmstack", "transformer", "onnx"} <= set(fm["tags"])
    assert fm["datasets"] == ["python-stdlib", "scraped-notes"] and fm["metrics"] == ["loss", "perplexity"]
    result = fm["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"loss": 3.25, "perplexity": 25.8}
    for section in ("Model Details", "Intended Use", "Training Data", "Evaluation", "Limitations"):
        assert f"\n## {section}\n" in body
    assert "transformer, 54321 parameters" in body and "| perplexity | 25.8 |" in body
    assert "| python-stdlib | PSF-2.0 |" in body and "3 token shards, 3003 tokens" in body
    assert "without a recorded license: scraped-notes" in body
    sbom_ns = json.loads((art / "SBOM.spdx.json").read_text())["documentNamespace"]
    assert sbom_ns in body
    side = ModelCard.load(art / "MODEL_CARD.json")
    side.verify(art)
    assert list(side.files) == ["model.onnx"] and side.config == {"d_model": 32, "n_layers": 2, "n_heads": 2}
    assert {e.kind for e in side.lineage} == {"dataset", "shard", "tokenizer", "checkpoint"}
    (art / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        side.verify(art)


@pytest.mark.parametrize(("license", "want"), [("MIT", {"license": "mit"}), (None, {"license": "other"}),
                                                ("GPL-3.0-only", {"license": "gpl-3.0"}),
                                                ("Apache-2.0 OR MIT", {"license": "other"})])
def test_license_mapping(art: Path, license, want) -> None:
    text, _ = build_card([art / "model.onnx"], base_dir=art, license=license)
    fm, body = _front_matter(text)
    assert fm["license"] == want["license"]
    if fm["license"] == "other":
        assert fm["license_name"] == (license or "unspecified")
    assert ("No license was specified" in body) == (license is None)


def test_card_without_metadata_still_has_every_section(art: Path) -> None:
    text, side = build_card([art / "tokenizer.json"], base_dir=art)
    fm, body = _front_matter(text)
    assert side.name == "tokenizer" and "datasets" not in fm and "model-index" not in fm
    assert "No evaluation metrics were recorded" in body and "records no data sources" in body


def test_bad_inputs(cli, art: Path, metadata_file: Path) -> None:
    out = art / "MODEL_CARD.md"
    rc, _, err = cli("card", art / "model.onnx", "--sbom", art / "missing.spdx.json", "--out", out)
    assert rc == 2 and "missing.spdx.json" in err
    (art / "broken.json").write_text("{")
    rc, _, err = cli("card", art / "model.onnx", "--sbom", art / "broken.json", "--out", out)
    assert rc == 2 and "not a readable SPDX JSON" in err
    rc, _, err = cli("card", art / "model.onnx", "--out", out, "--license", "Apache License")
    assert rc == 2 and "SPDX" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(("content", "want"), [
    ("[1, 2]", "is not an SPDX JSON SBOM (got a JSON array)"),
    ('{"foo": 1}', "is not an SPDX JSON SBOM (got an object without 'spdxVersion')"),
    ('{"spdxVersion": "SPDX-3.0"}', "is not an SPDX JSON SBOM (got spdxVersion 'SPDX-3.0')"),
    ('{"spdxVersion": "SPDX-2.3", "packages": 7}', "is not an SPDX JSON SBOM (got 'packages' that is not a list)"),
    ("{not json", "is not a readable SPDX JSON document (invalid JSON: "),
    (b"\xff\xfe{}", "is not a readable SPDX JSON document (not UTF-8 text)"),
])
def test_sbom_that_is_not_spdx_json_is_refused(run_module, art: Path, content: str | bytes, want: str) -> None:
    sbom = art / "list.json"
    sbom.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = art / "MODEL_CARD.md"
    r = run_module("card", art / "model.onnx", "--out", out, "--sbom", sbom)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: card.sbom: {sbom} {want}" in r.stderr and "expected an SPDX 2.x JSON SBOM" in r.stderr
    assert sorted(p.name for p in art.iterdir()) == ["list.json", "model.onnx", "tokenizer.json"]


def test_out_that_is_its_own_sidecar_is_refused(run_module, cli, art: Path, metadata_file: Path) -> None:
    out = art / "MODEL_CARD.json"
    out.write_text("kept\n")
    r = run_module("card", art / "model.onnx", "--metadata", metadata_file, "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: card.out: {out} is where the JSON sidecar goes, so it would replace the markdown card" in r.stderr
    assert "--out is the markdown path (e.g. MODEL_CARD.md)" in r.stderr
    assert out.read_text() == "kept\n" and sorted(p.name for p in art.iterdir()) == [
        "MODEL_CARD.json", "model.onnx", "tokenizer.json"]
    out.unlink()
    assert cli("card", art / "model.onnx", "--out", art / "MODEL_CARD")[0] == 0  # no suffix: .json is added
    assert (art / "MODEL_CARD").read_text().startswith("---\n") and ModelCard.load(art / "MODEL_CARD.json")
