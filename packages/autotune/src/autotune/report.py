"""Reading a study directory back: its results from the storage (``show``) and the best trial (``best``).

A directory written by :func:`autotune.study.run_study` holds ``spec.json`` (the spec it ran, with the storage path),
the SQLite storage, ``trials.csv`` and ``best.json``; these functions need only the directory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import optuna

from autotune.errors import AutotuneError
from autotune.study import StudyResult, TrialRecord, result, sqlite_url

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def load_result(out_dir: str | os.PathLike[str]) -> StudyResult:
    """The results of the study in ``out_dir``, read from its storage."""
    out = Path(out_dir).resolve()
    spec_path = out / "spec.json"
    if not spec_path.is_file():
        raise AutotuneError(f"{out} is not a study directory (no spec.json); run `python -m autotune run SPEC --out "
                            f"{out_dir}` first")
    doc = json.loads(spec_path.read_text(encoding="utf-8"))
    db = Path(doc["storage"])
    if not db.is_file():
        raise AutotuneError(f"the study's storage {db} is missing")
    url = sqlite_url(db)
    try:
        study = optuna.load_study(study_name=doc["name"], storage=url)
    except KeyError:
        raise AutotuneError(f"no study named {doc['name']!r} in {db}") from None
    return result(study, doc, out, url)


def ranked(res: StudyResult) -> list[TrialRecord]:
    """Best first: completed trials by value (in the study's direction; with several objectives the Pareto front
    first, then the others, each by number), then pruned, running and failed ones."""
    sign = -1.0 if res.direction == "maximize" else 1.0
    front = {t.number for t in res.pareto}

    def key(t: TrialRecord) -> tuple[int, float, int]:
        if res.multi:
            v = 0.0 if t.number in front else 1.0
        else:
            v = sign * t.value if t.value is not None and math.isfinite(t.value) else math.inf
        return (STATE_ORDER.get(t.state, 5), v if t.state == "COMPLETE" else 0.0, t.number)

    return sorted(res.trials, key=key)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


def table(res: StudyResult) -> str:
    """A fixed-width table of the trials, best first."""
    paths = sorted({p for t in res.trials for p in t.params})
    metrics = list(res.metrics) if res.multi else [res.metric]
    front = {t.number for t in res.pareto}
    head = ["#", "state", *metrics, "time_s", *paths]

    def values(t: TrialRecord) -> list[Any]:
        return (list(t.values) or [None] * len(metrics)) if res.multi else [t.value]

    rows = [[str(t.number), t.state + ("*" if t.number in front else ""), *(_fmt(v) for v in values(t)),
             "-" if t.duration_s is None else f"{t.duration_s:.1f}", *(_fmt(t.params.get(p)) for p in paths)]
            for t in ranked(res)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    done = res.count("COMPLETE")
    goal = (", ".join(f"{d} {m}" for m, d in zip(res.metrics, res.directions)) + f"; * the Pareto front "
            f"({len(res.pareto)} trials)") if res.multi else f"{res.direction} {res.metric}"
    summary = (f"study {res.name!r}: {len(res.trials)} trials ({done} complete, {res.count('PRUNED')} pruned, "
               f"{res.count('FAIL')} failed); {goal}")
    return "\n".join([summary, *lines])


def as_json(res: StudyResult) -> dict[str, Any]:
    doc = {"study": res.name, "storage": res.storage, "metric": res.metric, "direction": res.direction,
           "best": None if res.best is None else res.best.number,
           "trials": [{"number": t.number, "state": t.state, "value": t.value, "params": t.params,
                       "duration_s": t.duration_s, "error": t.error} for t in ranked(res)]}
    if res.multi:
        doc.update(metrics=list(res.metrics), directions=list(res.directions), pareto=[t.number for t in res.pareto])
        for row, t in zip(doc["trials"], ranked(res)):
            row["values"] = list(t.values)
    return doc


def best_command(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``best.json`` of ``out_dir``: the best trial's number, value, params and ``command_line``; for a study of
    several objectives, ``pareto.json``: its Pareto front's trials, each with those."""
    for name in ("best.json", "pareto.json"):
        path = Path(out_dir) / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise AutotuneError(f"{Path(out_dir) / 'best.json'} does not exist: no trial of this study has completed yet")
