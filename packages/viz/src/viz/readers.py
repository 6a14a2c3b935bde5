"""Read the CSV and JSONL logs back, including those of a run that crashed mid-write.

A killed process can leave the last line of a log cut short; the readers drop a final line that has no newline
(only there: a malformed line in the middle of a file is corruption and raises VizError naming file and line,
as does a ``scalars.csv`` or ``metrics.jsonl`` whose first line is not its backend's header).
``find_logs(run_dir)`` searches a directory tree for logs in these formats (by content, not only by name) and
``load_scalars`` returns, per log directory, ``{tag: [(step, value), ...]}`` sorted by step, keeping the last
value written for a step (a run resumed from an earlier checkpoint overwrites the steps it repeats).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viz.backends.csv_log import CSV_HEADER, CSV_NAME
from viz.backends.jsonl_log import JSONL_FORMAT, JSONL_HEADER, JSONL_NAME
from viz.errors import VizError

_HEADERS = {CSV_NAME: CSV_HEADER, JSONL_NAME: JSONL_HEADER}  # the backends' own file names


def _complete_lines(path: Path) -> list[str]:
    """The file's lines, without a trailing one that was cut short (no newline at the end)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1]  # the last element is '' after a final newline, or a partial record: drop it either way


def _float(x: Any) -> float:
    return float(x)  # also parses the strings 'nan', 'inf', '-inf' the JSONL writer uses


def read_csv(path: str | os.PathLike[str]) -> list[tuple[int, str, float, float]]:
    """Rows ``(step, tag, value, wall_time)`` of a ``scalars.csv`` written by the csv backend."""
    p = Path(path)
    lines = _complete_lines(p)
    if not lines or lines[0] + "\n" != CSV_HEADER:
        raise VizError(f"{p} is not an lmstack scalars CSV (expected header {CSV_HEADER.strip()!r})")
    rows = []
    for lineno, row in enumerate(csv.reader(lines[1:]), start=2):
        try:
            step, tag, value, wall = row
            rows.append((int(step), tag, _float(value), _float(wall)))
        except ValueError:
            raise VizError(f"{p}:{lineno}: malformed row {row!r}") from None
    return rows


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` written by the jsonl backend (without the format line)."""
    p = Path(path)
    lines = _complete_lines(p)
    try:
        head = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("format") != JSONL_FORMAT:
        raise VizError(f"{p} is not an lmstack JSONL log (its first line must be the {JSONL_FORMAT!r} format line)")
    records = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VizError(f"{p}:{lineno}: malformed line, not JSON ({exc})") from None
        if not isinstance(rec, dict) or "type" not in rec:
            raise VizError(f"{p}:{lineno}: a record must be an object with a 'type'")
        if rec["type"] == "scalars":
            try:
                _scalar_rows(rec)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise VizError(f"{p}:{lineno}: malformed scalars record (expected an integer 'step' and an object "
                               f"of numbers under 'values'): {line[:120]}") from None
        records.append(rec)
    return records


def _scalar_rows(r: dict[str, Any]) -> list[tuple[int, str, float, float]]:
    return [(int(r["step"]), tag, _float(v), _float(r.get("wall_time", 0.0))) for tag, v in r["values"].items()]


def scalars_from_jsonl(records: list[dict[str, Any]]) -> list[tuple[int, str, float, float]]:
    return [row for r in records if r["type"] == "scalars" for row in _scalar_rows(r)]


def _sniff(path: Path) -> str | None:
    """'csv' or 'jsonl' when the file starts like one of our logs, else None.

    A file with a backend's own name (scalars.csv, metrics.jsonl) must be that backend's log: a complete first
    line other than its header is a VizError naming the file and line 1. An empty file, or one whose only line
    was cut short by a crash, holds no records and is skipped like a foreign file.
    """
    expected = _HEADERS.get(path.name)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as exc:
        if expected is None:
            return None
        raise VizError(f"cannot read {path}: {exc.strerror or exc}") from None
    if first == CSV_HEADER:
        return "csv"
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and head.get("format") == JSONL_FORMAT:
        return "jsonl"
    if expected is not None and first.endswith("\n"):
        raise VizError(f"{path}:1: malformed log: the first line of a {path.name} must be {expected.strip()!r}, got "
                       f"{first.strip()[:80]!r}")
    return None


def find_logs(run_dir: str | os.PathLike[str]) -> dict[Path, tuple[str, Path]]:
    """Map each directory under ``run_dir`` holding logs to ``(kind, file)``; the CSV wins over the JSONL
    when a directory has both (they hold the same scalars, and the CSV is smaller to read)."""
    root = Path(run_dir)
    found: dict[Path, tuple[str, Path]] = {}
    for p in sorted([*root.rglob("*.csv"), *root.rglob("*.jsonl")]):
        kind = _sniff(p) if p.is_file() else None
        if kind is None:
            continue
        if p.parent not in found or (kind == "csv" and found[p.parent][0] != "csv"):
            found[p.parent] = (kind, p)
    return found


@dataclass
class RunLog:
    """The scalars of one log directory: ``series[tag] = [(step, value), ...]`` sorted by step."""

    name: str
    path: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def load_scalars(run_dir: str | os.PathLike[str]) -> list[RunLog]:
    """Every log under ``run_dir``; VizError naming ``run_dir`` if it holds none."""
    root = Path(run_dir)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise VizError(f"run directory {str(root)!r} {what}")
    logs = find_logs(root)
    if not logs:
        raise VizError(f"no lmstack CSV or JSONL logs found under {str(root)!r} (looked for scalars.csv / "
                       f"metrics.jsonl written by viz's csv or jsonl backend)")
    runs = []
    for d, (kind, p) in sorted(logs.items()):
        rows = read_csv(p) if kind == "csv" else scalars_from_jsonl(read_jsonl(p))
        by_tag: dict[str, dict[int, float]] = {}
        for step, tag, value, _ in rows:
            by_tag.setdefault(tag, {})[step] = value  # later rows win: a resumed run's repeat of a step
        name = str(d.relative_to(root)) if d != root else root.name
        runs.append(RunLog(name=name, path=p, series={t: sorted(s.items()) for t, s in sorted(by_tag.items())}))
    return runs
