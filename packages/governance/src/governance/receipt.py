"""Reproducibility receipt: an in-toto Statement v1 saying what was built, from what, where and how.

Reference: in-toto Attestation Framework v1 (https://github.com/in-toto/attestation/tree/main/spec/v1): Statement
(``_type``, ``subject`` with sha256 digests, ``predicateType``, ``predicate``) and ResourceDescriptor for inputs.
The predicate (type :data:`PREDICATE_TYPE`) records the system, Python, CUDA/driver/GPUs when present, torch when
installed (probed at run time; torch is not a governance dependency), installed packages, git commit and dirty
state, the command line, artifact hashes and the training metadata (``specs.metadata``). With a key the Statement
is wrapped in a DSSE envelope signed with Ed25519 (:mod:`governance.dsse`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from governance import __version__
from governance._io import existing_files, rel_name, sha256_file, write_atomic
from governance.dsse import sign_envelope
from governance.sbom import iso, scan_environment, source_date
from governance.sign import load_private_key
from specs.metadata import load_metadata, validate_metadata

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://lmstack.dev/attestations/receipt/v1"


def _run(cmd: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the repository holding ``cwd``, or None outside one (or without git).

    Dirty means tracked files differ from HEAD; untracked files (runs/, artifacts/) do not count.
    """
    if not shutil.which("git"):
        return None
    commit = _run(["git", "rev-parse", "HEAD"], cwd)
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit.strip(), "dirty": bool(status and status.strip())}


def cuda_state() -> dict[str, Any] | None:
    """Driver version, CUDA version and GPUs from ``nvidia-smi`` when it is installed and answers, else None."""
    if not shutil.which("nvidia-smi"):
        return None
    rows = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if rows is None:
        return None
    gpus = [dict(zip(("name", "driver", "memory"), (c.strip() for c in line.split(",")))) for line in
            rows.strip().splitlines() if line.strip()]
    banner = _run(["nvidia-smi"]) or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return {"driver": gpus[0]["driver"] if gpus else None, "cuda": m.group(1) if m else None, "gpus": gpus}


def torch_state(probe: bool = True) -> dict[str, Any] | None:
    """torch's version and CUDA build when torch is importable (already imported, or ``probe`` allows importing)."""
    if "torch" not in sys.modules and not (probe and importlib.util.find_spec("torch")):
        return None
    try:
        torch = importlib.import_module("torch")
        out: dict[str, Any] = {"version": str(torch.__version__), "cuda": torch.version.cuda,
                               "cuda_available": bool(torch.cuda.is_available())}
        if out["cuda_available"]:
            out["cudnn"] = torch.backends.cudnn.version()
            out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return out
    except Exception as exc:  # a broken torch install must not stop the receipt; record why instead
        return {"error": f"{type(exc).__name__}: {exc}"}


def system_state() -> dict[str, Any]:
    return {"os": platform.system(), "release": platform.release(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count()}


def python_state() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "prefix": sys.prefix}


def resolved_dependencies(md: Mapping[str, Any]) -> list[dict[str, Any]]:
    """in-toto ResourceDescriptors for the run's inputs named in the metadata (each with a uri or a digest)."""
    out: list[dict[str, Any]] = []

    def add(name: str, uri: str | None, sha: str | None, **annotations: Any) -> None:
        if not uri and not sha:  # a ResourceDescriptor needs one of uri/digest/content
            return
        rd: dict[str, Any] = {"name": name}
        if uri:
            rd["uri"] = uri
        if sha:
            rd["digest"] = {"sha256": sha}
        if ann := {k: v for k, v in annotations.items() if v is not None}:
            rd["annotations"] = ann
        out.append(rd)

    data = md.get("data") or {}
    for s in data.get("sources") or []:
        add(f"source:{s['name']}", s.get("uri"), s.get("sha256"), license=s.get("license"))
    if data.get("manifest"):
        add("manifest", str(data["manifest"]), data.get("manifest_sha256"))
    for s in data.get("shards") or []:
        add(f"shard:{s['path']}", str(s["path"]), s.get("sha256"), tokens=s.get("tokens"))
    tok = md.get("tokenizer") or {}
    if tok:
        add("tokenizer", tok.get("path"), tok.get("sha256"), spec=tok.get("spec"))
    for p in md.get("parents") or []:
        add(f"{p['kind']}:{p['path']}", str(p["path"]), p.get("sha256"))
    ckpt = md.get("checkpoint") or {}
    for fname, sha in sorted((ckpt.get("files") or {}).items()):
        add(f"checkpoint:{fname}", f"{ckpt.get('path', '.')}/{fname}", sha if isinstance(sha, str) else None)
    return out


def build_statement(artifacts: Sequence[str | os.PathLike[str]], *, base_dir: str | os.PathLike[str] = ".",
                    metadata: Mapping[str, Any] | None = None, command: Sequence[str] | None = None,
                    probe_torch: bool = True, git_cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The in-toto Statement (a dict). Subjects are the artifacts, named relative to ``base_dir``."""
    paths = existing_files(artifacts)
    md = validate_metadata(metadata) if metadata is not None else None
    subjects, files = [], []
    for p in sorted(dict.fromkeys(paths), key=lambda q: rel_name(q, Path(base_dir))):
        name, sha = rel_name(p, Path(base_dir)), sha256_file(p)
        subjects.append({"name": name, "digest": {"sha256": sha}})
        files.append({"name": name, "sha256": sha, "bytes": p.stat().st_size})
    predicate = {
        "builder": {"id": "lmstack-governance", "version": __version__},
        "createdOn": iso(source_date()),
        "command": list(command) if command is not None else list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "git": git_state(git_cwd),
        "system": system_state(),
        "python": python_state(),
        "cuda": cuda_state(),
        "torch": torch_state(probe_torch),
        "packages": [{"name": d.name, "version": d.version, "purl": d.purl} for d in scan_environment()],
        "artifacts": files,
        "resolvedDependencies": resolved_dependencies(md) if md else [],
        "trainingMetadata": md,
    }
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def write_receipt(out: str | os.PathLike[str], artifacts: Sequence[str | os.PathLike[str]], *,
                  metadata: Mapping[str, Any] | str | os.PathLike[str] | None = None,
                  key_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    """Write RECEIPT.json: the Statement, or with ``key_path`` its DSSE envelope. Inputs are all checked first."""
    md = load_metadata(metadata) if isinstance(metadata, (str, os.PathLike)) else metadata
    key = load_private_key(key_path) if key_path is not None else None
    statement = build_statement(artifacts, base_dir=Path(out).parent, metadata=md, **kwargs)
    body = json.dumps(statement, indent=2, ensure_ascii=False, default=str)
    doc = sign_envelope(body.encode("utf-8"), key) if key is not None else statement
    return write_atomic(out, json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
