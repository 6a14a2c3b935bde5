"""Shared fixtures: a training-metadata document, fake artifacts, keys and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governance.cli import main


def metadata_doc() -> dict:
    """A metadata.json in the specs.metadata shape, every section filled."""
    return {
        "metadata_version": 1, "run": "tiny-run", "created": "2026-01-02T03:04:05Z", "step": 40,
        "config": {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2}, "train": {"lr": 0.001}},
        "model": {"arch": "transformer", "params": 54321, "config_sha256": "ab" * 32},
        "data": {"manifest": "corpus/manifest.json", "manifest_sha256": "cd" * 32,
                 "shards": [{"path": f"corpus/shard_{i}.bin", "sha256": f"{i:02x}" * 32, "tokens": 1000 + i}
                            for i in range(3)],
                 "sources": [{"name": "python-stdlib", "license": "PSF-2.0", "sha256": "ef" * 32},
                             {"name": "scraped-notes"}]},
        "tokenizer": {"spec": "bpe:512", "sha256": "12" * 32},
        "checkpoint": {"path": "runs/tiny/step_40", "files": {"model.safetensors": "34" * 32}},
        "parents": [{"kind": "checkpoint", "path": "runs/tiny/step_20", "sha256": "56" * 32}],
        "artifacts": [{"path": "artifacts/model.onnx", "sha256": "78" * 32}],
        "metrics": {"loss": 3.25, "perplexity": 25.8},
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "environment": {"python": "3.11.7", "torch": "2.13.0", "cuda": None, "platform": "linux"},
        "command": ["torchrun", "-m", "train.run", "--config", "cfgs/debug.yaml"],
    }


@pytest.fixture
def metadata() -> dict:
    return metadata_doc()


@pytest.fixture(scope="module")
def module_metadata() -> dict:
    return metadata_doc()


@pytest.fixture
def metadata_file(tmp_path: Path, metadata: dict) -> Path:
    import json

    p = tmp_path / "train" / "metadata.json"
    p.parent.mkdir()
    p.write_text(json.dumps(metadata))
    return p


@pytest.fixture
def art(tmp_path: Path) -> Path:
    """An artifacts/ directory with a fake model and tokenizer."""
    d = tmp_path / "artifacts"
    d.mkdir()
    (d / "model.onnx").write_bytes(os.urandom(4096))
    (d / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n')
    return d


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    from governance.sign import keygen

    return keygen(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _fixed_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.delenv("LMSTACK_SIGNING_KEY", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``python -m governance ARGS`` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


@pytest.fixture
def run_module():
    """``python -m governance`` in a subprocess (for exit codes, tracebacks and byte-identical output)."""

    def run(*args: str | os.PathLike[str], cwd: Path | None = None, env: dict | None = None):
        return subprocess.run([sys.executable, "-m", "governance", *map(str, args)], cwd=cwd, capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, timeout=120)

    return run
