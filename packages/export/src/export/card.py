"""The export's ``modelcard.json`` (a :class:`specs.modelcard.ModelCard`) and the metadata handed to hooks.

The card hashes every artifact file (sha256 + size; ``ModelCard.verify`` re-checks them), carries the ModelConfig,
the ExportConfig, the graph's input/output names and shapes, the parity figures against PyTorch, the quantization
figures and the versions of the software that produced it. The hook metadata follows :mod:`specs.metadata`, so
governance can build its SBOM, checksums and model card from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from specs.metadata import METADATA_VERSION, validate_metadata
from specs.modelcard import LineageEntry, ModelCard, sha256_file


def config_dict(config: Any) -> dict[str, Any]:
    """A ModelConfig (or any dataclass / plain-attribute config) as a JSON-ready dict."""
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "torchao", "lmstack-export"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def created_at() -> str:
    """UTC ISO time, or SOURCE_DATE_EPOCH's time for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_card(*, name: str, workdir: Path, files: list[str], model_config: Any, export_config: Any,
               io: Mapping[str, Any], target_meta: Mapping[str, Any], lineage: tuple[LineageEntry, ...] = (),
               params: int | None = None) -> ModelCard:
    metadata = {"kind": "export", "target": export_config.target, "created": created_at(),
                "export_config": export_config.to_dict(), **io, **target_meta,
                "model": {"params": params}, "software": _versions()}
    return ModelCard.for_files(name, workdir, files, config=config_dict(model_config), lineage=lineage,
                               metadata=json.loads(json.dumps(metadata)))


def hook_metadata(card: ModelCard, outdir: Path, published: list[Path], *, arch: str,
                  base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """specs.metadata-shaped dict for hooks: the caller's training metadata plus this export's artifacts."""
    doc: dict[str, Any] = dict(base or {})
    doc.setdefault("metadata_version", METADATA_VERSION)
    doc.setdefault("run", card.name)
    config_sha = hashlib.sha256(json.dumps(card.config, sort_keys=True).encode()).hexdigest()
    doc.setdefault("model", {"arch": arch, "params": card.metadata.get("model", {}).get("params"),
                             "config_sha256": config_sha})
    artifacts = [a for a in doc.get("artifacts") or [] if isinstance(a, Mapping)]
    artifacts += [{"path": str(p), "sha256": card.files[p.name].sha256 if p.name in card.files else sha256_file(p)}
                  for p in published]
    doc["artifacts"] = artifacts
    doc["export"] = {"outdir": str(outdir), "target": card.metadata.get("target"),
                     "modelcard": str(outdir / "modelcard.json")}
    return validate_metadata(doc, "export hook metadata")
