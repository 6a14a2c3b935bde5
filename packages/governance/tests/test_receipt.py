"""Receipts: in-toto Statement shape, DSSE signatures checked independently per the spec, environment probes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from governance.receipt import build_statement, cuda_state, git_state, torch_state


def _spec_pae(payload_type: str, body: bytes) -> bytes:
    # DSSE protocol.md: PAE(type, body) = "DSSEv1" + SP + LEN(type) + SP + type + SP + LEN(body) + SP + body
    t = payload_type.encode()
    return b" ".join([b"DSSEv1", str(len(t)).encode(), t, str(len(body)).encode(), body])


def test_unsigned_receipt_is_an_in_toto_statement(cli, art: Path, metadata_file: Path, metadata: dict) -> None:
    out = art / "RECEIPT.json"
    rc, _, _ = cli("receipt", "--artifacts", art / "model.onnx", art / "tokenizer.json", "--out", out,
                   "--metadata", metadata_file, "--no-torch-probe")
    assert rc == 0
    st = json.loads(out.read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"].startswith("https://") and set(st) == {"_type", "subject", "predicateType", "predicate"}
    subj = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert subj == {n: hashlib.sha256((art / n).read_bytes()).hexdigest() for n in ("model.onnx", "tokenizer.json")}
    pred = st["predicate"]
    assert pred["trainingMetadata"] == metadata
    assert pred["python"]["version"].count(".") == 2 and pred["system"]["os"]
    assert pred["createdOn"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH
    assert any(p["name"] == "cryptography" and p["purl"].startswith("pkg:pypi/cryptography@") for p in pred["packages"])
    assert pred["command"] and all(isinstance(a, str) for a in pred["command"])
    deps = {d["name"]: d for d in pred["resolvedDependencies"]}
    assert deps["shard:corpus/shard_1.bin"]["digest"] == {"sha256": "01" * 32}
    assert deps["source:python-stdlib"]["annotations"] == {"license": "PSF-2.0"}
    assert "source:scraped-notes" not in deps  # neither uri nor digest: not a valid ResourceDescriptor
    assert deps["checkpoint:runs/tiny/step_20"]["uri"] == "runs/tiny/step_20"
    assert pred["torch"] is None or "version" in pred["torch"]


def test_dsse_envelope_verifies_independently(cli, art: Path, metadata_file: Path, keypair) -> None:
    key, pub_pem = keypair
    out = art / "RECEIPT.json"
    rc, _, _ = cli("receipt", "--artifacts", art / "model.onnx", "--out", out, "--metadata", metadata_file,
                   "--key", key, "--no-torch-probe")
    assert rc == 0
    env = json.loads(out.read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json" and len(env["signatures"]) == 1
    body = base64.b64decode(env["payload"])
    pub = serialization.load_pem_public_key(pub_pem.read_bytes())
    sig = base64.b64decode(env["signatures"][0]["sig"])
    pub.verify(sig, _spec_pae(env["payloadType"], body))  # raises if wrong
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert env["signatures"][0]["keyid"] == hashlib.sha256(der).hexdigest()
    assert json.loads(body)["_type"] == "https://in-toto.io/Statement/v1"
    tampered = body.replace(b'"tiny-run"', b'"evil-run"')
    assert tampered != body
    with pytest.raises(InvalidSignature):
        pub.verify(sig, _spec_pae(env["payloadType"], tampered))
    with pytest.raises(InvalidSignature):  # the signature is over PAE, not the bare payload
        pub.verify(sig, body)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_and_dirty_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True, text=True)
    git("init", "-q")
    (repo / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "c")
    head = git("rev-parse", "HEAD").stdout.strip()
    (repo / "untracked.bin").write_text("runs/ output")
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "f.txt").write_text("2")
    assert git_state(repo) == {"commit": head, "dirty": True}
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) is None  # outside any repository


def test_cuda_state_parses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nif [ -n "$1" ]; then echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"; '
                    'echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"; else '
                    'echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |"; fi\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    state = cuda_state()
    assert state == {"driver": "550.54.15", "cuda": "12.4",
                     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}] * 2}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cuda_state() is None


def test_torch_probe_records_the_installed_torch() -> None:
    torch = pytest.importorskip("torch")
    state = torch_state(probe=True)
    assert state["version"] == str(torch.__version__) and state["cuda"] == torch.version.cuda
    assert state["cuda_available"] == torch.cuda.is_available()


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda m: m.update(metadata_version=2), "metadata_version"),
    (lambda m: m["data"]["shards"][1].pop("sha256"), "data.shards[1].sha256"),
    (lambda m: m.update(step="forty"), ".step"),
    (lambda m: m["parents"].append("runs/x"), "parents[1]"),
])
def test_malformed_metadata_names_the_key_path(run_module, art: Path, metadata: dict, mutate, path: str) -> None:
    mutate(metadata)
    bad = art.parent / "bad.json"
    bad.write_text(json.dumps(metadata))
    r = run_module("receipt", "--artifacts", art / "model.onnx", "--out", art / "RECEIPT.json", "--metadata", bad,
                   "--no-torch-probe")
    assert r.returncode == 2 and path in r.stderr and "Traceback" not in r.stderr
    assert not (art / "RECEIPT.json").exists()


def test_not_json_metadata_and_missing_metadata(cli, art: Path) -> None:
    bad = art.parent / "m.json"
    bad.write_text("{not json")
    rc, _, err = cli("receipt", "--artifacts", art / "model.onnx", "--out", art / "R.json", "--metadata", bad)
    assert rc == 2 and "not valid JSON" in err
    rc, _, err = cli("receipt", "--artifacts", art / "model.onnx", "--out", art / "R.json",
                     "--metadata", bad.with_name("x"))
    assert rc == 2 and "file not found" in err and not (art / "R.json").exists()


def test_build_statement_names_subjects_relative_to_base(art: Path, tmp_path: Path) -> None:
    st = build_statement([art / "model.onnx"], base_dir=tmp_path, probe_torch=False, command=["x"])
    assert st["subject"][0]["name"] == "artifacts/model.onnx" and st["predicate"]["command"] == ["x"]
    assert st["predicate"]["trainingMetadata"] is None and st["predicate"]["resolvedDependencies"] == []
