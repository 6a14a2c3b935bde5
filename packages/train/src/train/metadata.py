"""What a checkpoint's ``metadata.json`` records for governance: the run's provenance in the shape of
:mod:`specs.metadata` (config, data manifest and shard hashes, tokenizer hash, git commit, environment, command).

``RunInfo`` is gathered once when training starts (git and environment do not change mid-run); ``build`` adds
the per-checkpoint parts (step, metrics, file hashes) and validates the result with ``specs.metadata``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specs.metadata import METADATA_VERSION, validate_metadata
from specs.modelcard import sha256_file


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
        "platform": platform.platform(),
    }


def git_info(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the repository around ``cwd``, or None outside git (or without git)."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def data_section(manifest_dir: str | Path | None) -> dict[str, Any] | None:
    """Manifest path and hash, shard hashes and sources from a shard directory's ``manifest.json``."""
    if manifest_dir is None:
        return None
    path = Path(manifest_dir) / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    shards = [{"path": s["path"], "sha256": s["sha256"], "tokens": s.get("num_tokens")}
              for s in manifest.get("shards", []) if "path" in s and "sha256" in s]
    sources = [s for s in manifest.get("sources", []) if isinstance(s, dict) and "name" in s]
    return {"manifest": str(path), "manifest_sha256": sha256_file(path), "shards": shards, "sources": sources}


def tokenizer_section(tokenizer: Any, spec: str | None) -> dict[str, Any] | None:
    if tokenizer is None:
        return {"spec": spec} if spec else None
    fp = tokenizer.fingerprint() if hasattr(tokenizer, "fingerprint") else None
    return {"spec": spec or getattr(tokenizer, "spec", None), "sha256": fp,
            "vocab_size": getattr(tokenizer, "vocab_size", None)}


@dataclass
class RunInfo:
    """Provenance gathered once per run."""

    run: str
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    git: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=environment)
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    @classmethod
    def collect(cls, *, run: str, config: dict[str, Any], model: dict[str, Any], manifest_dir: Any = None,
                tokenizer: Any = None, tokenizer_spec: str | None = None, command: list[str] | None = None) -> RunInfo:
        cfg_hash = hashlib.sha256(json.dumps(model.get("config", {}), sort_keys=True).encode()).hexdigest()
        return cls(run=run, config=config, model={**model, "config_sha256": cfg_hash},
                   data=data_section(manifest_dir), tokenizer=tokenizer_section(tokenizer, tokenizer_spec),
                   git=git_info(), command=list(command) if command is not None else list(sys.argv))

    def build(self, *, step: int, checkpoint_path: str, files: dict[str, str], metrics: dict[str, float],
              parents: list[dict[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "metadata_version": METADATA_VERSION,
            "run": self.run,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "step": step,
            "config": self.config,
            "model": {k: v for k, v in self.model.items() if k != "config"},
            "checkpoint": {"path": checkpoint_path, "files": files},
            "parents": parents,
            "metrics": metrics,
            "environment": self.environment,
            "command": self.command,
        }
        for key in ("data", "tokenizer", "git"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return validate_metadata(doc)
