"""Atomic publication of an export: build in a staging directory, validate, then move into place.

The staging directory is a sibling of ``outdir`` (same filesystem, so every move is a rename). A failed export
removes it and leaves ``outdir`` untouched. Publishing into an existing ``outdir`` first removes its old
``modelcard.json`` (the file that says a directory is complete), renames each new artifact in, deletes artifacts the
old card listed that this export did not write, and renames the new card in last: at no moment does a card list
files that are not the ones it hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from export.errors import ExportError

CARD = "modelcard.json"


def make_staging(outdir: Path) -> Path:
    """Create ``.<outdir name>.partial-XXXX`` beside ``outdir``; ExportError if that is not possible."""
    if outdir.exists() and not outdir.is_dir():
        raise ExportError(f"outdir {outdir} exists and is not a directory")
    if outdir.is_dir() and not os.access(outdir, os.W_OK | os.X_OK):
        raise ExportError(f"outdir {outdir} is not writable")
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{outdir.name}.partial-", dir=outdir.parent))
    except OSError as exc:
        raise ExportError(f"outdir {outdir} is not writable: cannot create a staging directory beside it "
                          f"({exc.strerror or exc})") from None


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _listed_files(card_path: Path) -> set[str]:
    try:
        return set(json.loads(card_path.read_text(encoding="utf-8")).get("files", {}))
    except (OSError, ValueError, AttributeError):
        return set()


def publish(staging: Path, outdir: Path, files: list[str]) -> list[Path]:
    """Move ``files`` and modelcard.json from ``staging`` into ``outdir``; return the published paths."""
    names = [f for f in files if f != CARD]
    for f in [*names, CARD]:
        if not (staging / f).is_file():
            raise ExportError(f"internal error: {f} missing from the staging directory")
    try:
        if not outdir.exists():
            for extra in set(os.listdir(staging)) - {*names, CARD}:
                shutil.rmtree(staging / extra) if (staging / extra).is_dir() else (staging / extra).unlink()
            os.replace(staging, outdir)
        else:
            stale = _listed_files(outdir / CARD) - set(names) - {CARD}
            (outdir / CARD).unlink(missing_ok=True)
            for f in names:
                os.replace(staging / f, outdir / f)
            for f in stale:
                if "/" not in f and ".." not in f:  # only files this exporter could have written
                    (outdir / f).unlink(missing_ok=True)
            os.replace(staging / CARD, outdir / CARD)
            discard(staging)
    except OSError as exc:
        raise ExportError(f"could not move the export into {outdir}: {exc}") from exc
    return [outdir / f for f in [*names, CARD]]
