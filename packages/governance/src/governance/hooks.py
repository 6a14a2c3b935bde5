"""How train and export reach governance without importing it (ARCHITECTURE.md: entry points, not imports).

- ``GovernanceCallback`` (entry point ``lmstack.callbacks: governance``) implements
  ``specs.protocols.TrainerCallback``: on each checkpoint it reads ``<ckpt>/metadata.json`` (``specs.metadata``)
  and writes RECEIPT.json and LINEAGE.dot beside it.
- ``on_export`` (entry point ``lmstack.export_hooks: governance``) runs after an export wrote its artifacts and
  writes SBOM.spdx.json, RECEIPT.json, LINEAGE.dot (with metadata), MODEL_CARD.md/.json and, last, CHECKSUMS.sha256
  over the artifacts and all of those, so ``python -m governance verify`` passes on the directory.

Signing: set ``LMSTACK_SIGNING_KEY`` to an Ed25519 private key file (32 raw bytes or PEM PKCS#8) to sign the
checksums (``.sig`` + ``.pub.pem``) and wrap receipts in DSSE envelopes; unset means unsigned.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from governance._io import existing_files
from governance.card import write_card
from governance.lineage import write_lineage
from governance.receipt import write_receipt
from governance.sbom import write_sbom
from governance.sign import load_private_key, write_checksums
from specs.errors import ConfigError
from specs.metadata import load_metadata, validate_metadata

KEY_ENV = "LMSTACK_SIGNING_KEY"
GOVERNANCE_FILES = frozenset({"RECEIPT.json", "LINEAGE.dot", "LINEAGE.png", "SBOM.spdx.json", "CHECKSUMS.sha256",
                              "CHECKSUMS.sha256.sig", "CHECKSUMS.sha256.pub.pem", "MODEL_CARD.md", "MODEL_CARD.json"})


def _key_from_env() -> str | None:
    key = os.environ.get(KEY_ENV) or None
    if key is not None:
        load_private_key(key)  # fail before writing anything if the configured key is unusable
    return key


class GovernanceCallback:
    """Trainer callback: RECEIPT.json and LINEAGE.dot beside every checkpoint.

    ``key``: Ed25519 private key path for DSSE-signed receipts (default: ``$LMSTACK_SIGNING_KEY``).
    ``png``: also render LINEAGE.png when graphviz is installed (off by default: it runs on every checkpoint).
    """

    def __init__(self, key: str | os.PathLike[str] | None = None, png: bool = False):
        self.key = key
        self.png = png

    # The other TrainerCallback hooks have nothing to record; present so the object satisfies the Protocol.
    def on_step(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        return None

    def on_eval(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        return None

    def on_end(self, trainer: Any) -> None:
        return None

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        d = Path(path)
        md = load_metadata(d / "metadata.json")
        key = self.key if self.key is not None else _key_from_env()
        listed = sorted((md.get("checkpoint") or {}).get("files") or {})
        if listed:
            files = [d / "metadata.json", *(d / f for f in listed)]
        else:
            files = sorted(f for f in d.iterdir()
                           if f.is_file() and f.name not in GOVERNANCE_FILES and not f.name.startswith("."))
        write_receipt(d / "RECEIPT.json", files, metadata=md, key_path=key)
        write_lineage(d / "LINEAGE.dot", md, png=self.png and shutil.which("dot") is not None)


def _resolve(artifact: str | os.PathLike[str], outdir: Path) -> Path:
    p = Path(artifact)
    return p if p.is_absolute() or p.exists() or not (outdir / p).exists() else outdir / p


def on_export(outdir: str, artifacts: Sequence[str], metadata: Mapping[str, Any] | None = None) -> list[str]:
    """Write the release's governance files into ``outdir``; return their paths. Artifact paths are absolute,
    relative to the cwd, or relative to ``outdir``."""
    d = Path(outdir)
    if not artifacts:
        raise ConfigError("export_hooks.governance", "no artifacts were exported, so there is nothing to govern")
    paths = existing_files([_resolve(a, d) for a in artifacts])
    md = validate_metadata(metadata, "export metadata") if metadata is not None else None
    key = _key_from_env()
    name = str(md["run"]) if md else paths[0].stem
    written = [write_sbom(d / "SBOM.spdx.json", name, paths),
               write_receipt(d / "RECEIPT.json", paths, metadata=md, key_path=key)]
    if md is not None:
        dot, png, _ = write_lineage(d / "LINEAGE.dot", md, paths, png=shutil.which("dot") is not None)
        written += [dot, *([png] if png else [])]
    written += write_card(d / "MODEL_CARD.md", paths, metadata=md, sbom=d / "SBOM.spdx.json")
    written += write_checksums([*paths, *written], d / "CHECKSUMS.sha256", key)
    return [str(p) for p in written]
