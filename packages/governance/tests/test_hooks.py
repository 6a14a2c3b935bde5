"""Wiring: the trainer callback and export hook, found through entry points and run on fake directories."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from governance.hooks import GovernanceCallback, on_export
from governance.verify import verify
from specs.errors import ConfigError
from specs.plugins import resolve
from specs.protocols import TrainerCallback


def _checkpoint(tmp_path: Path, metadata: dict) -> Path:
    d = tmp_path / "runs" / "tiny" / "step_40"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (d / "config.json").write_text('{"d_model": 32}')
    (d / "metadata.json").write_text(json.dumps(metadata))
    return d


def test_entry_points_resolve_to_the_hooks() -> None:
    resolve.cache_clear()
    cb = {ep.name: ep.value for ep in entry_points(group="lmstack.callbacks")}
    ex = {ep.name: ep.value for ep in entry_points(group="lmstack.export_hooks")}
    assert cb["governance"] == "governance.hooks:GovernanceCallback"
    assert ex["governance"] == "governance.hooks:on_export"
    assert resolve("lmstack.callbacks", "governance") is GovernanceCallback
    assert resolve("lmstack.export_hooks", "governance") is on_export
    assert isinstance(GovernanceCallback(), TrainerCallback)


def test_callback_writes_receipt_and_lineage_beside_checkpoint(tmp_path: Path, metadata: dict) -> None:
    d = _checkpoint(tmp_path, metadata)
    cb = GovernanceCallback()
    cb.on_step(None, 1, {"loss": 1.0})
    cb.on_checkpoint(object(), str(d))
    st = json.loads((d / "RECEIPT.json").read_text())
    # metadata.checkpoint.files names what the trainer cares about: those plus metadata.json are the subjects
    assert sorted(s["name"] for s in st["subject"]) == ["metadata.json", "model.safetensors"]
    assert st["predicate"]["trainingMetadata"]["run"] == "tiny-run"
    dot = (d / "LINEAGE.dot").read_text()
    assert dot.startswith('digraph "lineage: tiny-run"') and "checkpoint: runs/tiny/step_40" in dot
    if shutil.which("dot"):
        assert subprocess.run(["dot", "-Tsvg", str(d / "LINEAGE.dot")], capture_output=True).returncode == 0


def test_callback_without_file_list_signs_with_env_key(tmp_path: Path, metadata: dict, keypair,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    del metadata["checkpoint"]
    d = _checkpoint(tmp_path, metadata)
    monkeypatch.setenv("LMSTACK_SIGNING_KEY", str(keypair[0]))
    GovernanceCallback().on_checkpoint(None, str(d))
    env = json.loads((d / "RECEIPT.json").read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json"
    import base64

    st = json.loads(base64.b64decode(env["payload"]))
    assert sorted(s["name"] for s in st["subject"]) == ["config.json", "metadata.json", "model.safetensors"]
    # a second checkpoint save must not hash our own outputs as inputs
    GovernanceCallback().on_checkpoint(None, str(d))
    st2 = json.loads(base64.b64decode(json.loads((d / "RECEIPT.json").read_text())["payload"]))
    assert [s["name"] for s in st2["subject"]] == [s["name"] for s in st["subject"]]


def test_callback_errors_name_the_problem(tmp_path: Path, metadata: dict) -> None:
    empty = tmp_path / "ckpt"
    empty.mkdir()
    with pytest.raises(ConfigError, match="metadata.json"):
        GovernanceCallback().on_checkpoint(None, str(empty))
    metadata["data"]["shards"][0] = {"path": "x"}
    d = _checkpoint(tmp_path, metadata)
    with pytest.raises(ConfigError, match=r"data\.shards\[0\]\.sha256"):
        GovernanceCallback().on_checkpoint(None, str(d))
    assert not (d / "RECEIPT.json").exists() and not (d / "LINEAGE.dot").exists()


def test_on_export_writes_a_bundle_that_verifies(art: Path, metadata: dict, monkeypatch) -> None:
    monkeypatch.chdir(art.parent)
    written = on_export(str(art), ["model.onnx", "artifacts/tokenizer.json"], metadata)  # outdir- and cwd-relative
    names = sorted(Path(p).name for p in written)
    for expected in ("SBOM.spdx.json", "CHECKSUMS.sha256", "MODEL_CARD.md", "MODEL_CARD.json", "RECEIPT.json",
                     "LINEAGE.dot"):
        assert expected in names
    assert all(Path(p).parent == art for p in written)
    report = verify([art / "model.onnx", art / "tokenizer.json"])
    assert report.ok, report.problems
    listed = (art / "CHECKSUMS.sha256").read_text()
    assert all(f"  {n}\n" in listed for n in ("SBOM.spdx.json", "MODEL_CARD.md", "RECEIPT.json", "model.onnx"))
    assert "artifact: " in (art / "LINEAGE.dot").read_text()


def test_on_export_without_metadata_and_bad_inputs(art: Path, tmp_path: Path, monkeypatch) -> None:
    written = on_export(str(art), [str(art / "model.onnx")], None)
    assert not any(p.endswith("LINEAGE.dot") for p in written) and verify([art / "model.onnx"]).ok
    with pytest.raises(ConfigError, match="nothing to govern"):
        on_export(str(art), [], None)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "model.onnx").write_bytes(b"m")
    bad_key = tmp_path / "k"
    bad_key.write_bytes(b"short")
    monkeypatch.setenv("LMSTACK_SIGNING_KEY", str(bad_key))
    with pytest.raises(ConfigError, match="got 5 bytes"):
        on_export(str(fresh), ["model.onnx"], None)
    with pytest.raises(ConfigError, match="metadata_version"):
        on_export(str(fresh), ["model.onnx"], {"run": "x"})
    assert sorted(p.name for p in fresh.iterdir()) == ["model.onnx"]
