"""Post-export hooks: in-process fakes through ``extra_hooks`` and the installed governance hook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from export.errors import HookError
from export.exporter import export
from specs.errors import PluginError
from specs.export import ExportConfig
from specs.metadata import validate_metadata
from specs.modelcard import ModelCard, sha256_file


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, outdir, artifacts, metadata):
        # what a hook sees: everything already published and complete
        ModelCard.load(Path(outdir) / "modelcard.json").verify(outdir)
        self.calls.append((outdir, artifacts, metadata))


def test_named_hook_called_after_publishing(tiny_model, tmp_path):
    rec = Recorder()
    cfg = ExportConfig(target="torchscript", outdir=str(tmp_path / "a"), hooks=("fake",))
    out = export(tiny_model, cfg, extra_hooks={"fake": rec}, metadata={"metadata_version": 1, "run": "r1",
                                                                          "metrics": {"loss": 2.5}})
    assert out.hooks == ("fake",) and len(rec.calls) == 1
    outdir, artifacts, metadata = rec.calls[0]
    assert outdir == str(out.outdir)
    assert [Path(a).name for a in artifacts] == ["model.pt", "modelcard.json"]
    validate_metadata(metadata)
    assert metadata["run"] == "r1" and metadata["metrics"] == {"loss": 2.5}  # the caller's metadata is kept
    card = ModelCard.load(out.outdir / "modelcard.json")
    assert metadata["artifacts"][0] == {"path": artifacts[0], "sha256": card.files["model.pt"].sha256}
    assert metadata["artifacts"][1]["sha256"] == sha256_file(out.outdir / "modelcard.json")


def test_no_hooks_and_unknown_hooks(tiny_model, tmp_path):
    rec = Recorder()
    export(tiny_model, ExportConfig(target="torchscript", outdir=str(tmp_path / "a"), hooks=()),
           extra_hooks={"fake": rec})
    assert rec.calls == []
    with pytest.raises(PluginError, match=r"unknown export_hooks 'fkae' \(did you mean 'fake'\?\)"):
        export(tiny_model, ExportConfig(target="torchscript", outdir=str(tmp_path / "b"), hooks=("fkae",)),
               extra_hooks={"fake": rec})
    assert not (tmp_path / "b").exists()  # resolved before any work


def test_failing_hook_leaves_complete_artifacts(tiny_model, tmp_path):
    def broken(outdir, artifacts, metadata):
        raise OSError("signing key unreadable")

    cfg = ExportConfig(target="torchscript", outdir=str(tmp_path / "a"), hooks=("broken",))
    with pytest.raises(HookError, match="export hook 'broken' failed: OSError: signing key unreadable"):
        export(tiny_model, cfg, extra_hooks={"broken": broken})
    ModelCard.load(tmp_path / "a" / "modelcard.json").verify(tmp_path / "a")


def test_every_installed_hook_runs_by_default_including_governance(tiny_model, tmp_path):
    pytest.importorskip("governance", reason="lmstack-governance is in the test extra")
    rec = Recorder()
    out = export(tiny_model, ExportConfig(target="torchscript", outdir=str(tmp_path / "a")), extra_hooks={"fake": rec})
    assert "governance" in out.hooks and "fake" in out.hooks and len(rec.calls) == 1
    names = {p.name for p in out.outdir.iterdir()}
    assert {"SBOM.spdx.json", "CHECKSUMS.sha256", "MODEL_CARD.md", "model.pt", "modelcard.json"} <= names
    if shutil.which("sha256sum"):  # GNU coreutils verifies the checksums governance wrote
        res = subprocess.run(["sha256sum", "-c", "CHECKSUMS.sha256"], cwd=out.outdir, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "model.pt: OK" in res.stdout and "modelcard.json: OK" in res.stdout
