"""ModelCard: the metadata written beside every checkpoint and exported artifact (``modelcard.json``).

It records the card schema version, the artifact files with sha256 and size, the ModelConfig, and lineage
(what this artifact was made from: datasets, tokenizer, parent checkpoints). ``ModelCard.version`` gates
loader behaviour; v1 cards (a flat ``sha256`` map, no sizes) are upgraded by :func:`card_v1_to_v2`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specs.errors import ConfigError, LmstackError

CARD_VERSION = 2


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileHash:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class LineageEntry:
    kind: str  # dataset | shard | tokenizer | checkpoint | artifact | model
    name: str
    sha256: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class ModelCard:
    name: str
    files: Mapping[str, FileHash] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    lineage: tuple[LineageEntry, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = CARD_VERSION

    @classmethod
    def for_files(cls, name: str, directory: str | os.PathLike[str], files: list[str], **kw: Any) -> ModelCard:
        d = Path(directory)
        return cls(name=name, files={f: FileHash(sha256_file(d / f), (d / f).stat().st_size) for f in files}, **kw)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lineage"] = [asdict(e) for e in self.lineage]
        return {"version": out.pop("version"), **out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        d = migrate_card(data)
        try:
            return cls(
                name=d["name"],
                version=d["version"],
                config=d.get("config", {}),
                metadata=d.get("metadata", {}),
                files={k: FileHash(**v) for k, v in d.get("files", {}).items()},
                lineage=tuple(LineageEntry(**e) for e in d.get("lineage", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError("modelcard", f"malformed model card: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelCard:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ConfigError("modelcard", f"{path} is not valid JSON: {exc}") from None

    def verify(self, directory: str | os.PathLike[str]) -> None:
        """Raise IntegrityError naming the first file that is missing, truncated or altered."""
        d = Path(directory)
        for name, expect in self.files.items():
            p = d / name
            if not p.is_file():
                raise IntegrityError(f"{p}: listed in modelcard.json but missing")
            size = p.stat().st_size
            if size != expect.bytes:
                raise IntegrityError(f"{p}: size {size} bytes, model card says {expect.bytes} (truncated or replaced)")
            got = sha256_file(p)
            if got != expect.sha256:
                raise IntegrityError(
                    f"{p}: sha256 {got[:16]}... does not match the model card's {expect.sha256[:16]}..."
                )


class IntegrityError(LmstackError):
    """A file does not match the hash recorded for it."""


def card_v1_to_v2(d: Mapping[str, Any]) -> dict[str, Any]:
    """v1: ``{"version": 1, "name", "sha256": {file: hex}, "config"}`` -> v2 with sizes (unknown: -1) and lineage."""
    out = {k: v for k, v in d.items() if k != "sha256"}
    out["files"] = {f: {"sha256": h, "bytes": -1} for f, h in d.get("sha256", {}).items()}
    out.setdefault("lineage", [])
    out["version"] = 2
    return out


def migrate_card(data: Mapping[str, Any]) -> dict[str, Any]:
    version = data.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise ConfigError("modelcard.version", f"must be a positive integer, got {version!r}")
    if version > CARD_VERSION:
        raise ConfigError("modelcard.version", f"card is version {version}; this code reads up to {CARD_VERSION}")
    d = dict(data)
    if version == 1:
        d = card_v1_to_v2(d)
    return d
