"""Retrieval quality as trec_eval computes it, and the TREC run and qrels file formats.

Measures (per query, then the mean over the judged queries): ``P@k``, ``recall@k``, ``ndcg@k`` and ``ndcg`` (gain =
relevance grade, discount log2(rank + 1), ideal from the judgments: Jarvelin and Kekalainen 2002), ``mrr``
(reciprocal rank of the first relevant document) and ``map`` (mean average precision). As trec_eval does, a run
is ordered by score, ties broken by document id in decreasing order, and a document is relevant when its grade is
at least 1. A judged query the run does not answer scores 0 (trec_eval's ``-c``). Tests compare every measure with
pytrec_eval, the bindings of trec_eval itself.

File formats: qrels lines ``qid 0 docid grade`` (or BEIR's ``qid docid grade`` TSV); run lines
``qid Q0 docid rank score tag``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from specs.io import atomic_write_text

Run = Mapping[str, Mapping[str, float]]  # qid -> docid -> score
Qrels = Mapping[str, Mapping[str, int]]  # qid -> docid -> grade

_MEASURE = re.compile(r"^(P|recall|ndcg)@(\d+)$|^(ndcg|mrr|map)$")


def _check(measures: Sequence[str]) -> None:
    for m in measures:
        match = _MEASURE.match(m)
        if not match or (match.group(2) is not None and int(match.group(2)) < 1):
            raise ValueError(f"unknown measure {m!r}; valid: P@k, recall@k, ndcg@k (k >= 1), ndcg, mrr, map")


def _ranked(scores: Mapping[str, float]) -> list[str]:
    # trec_eval: score descending, then document id descending
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _dcg(grades: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(grades) if g > 0)


def query_measures(ranked: Sequence[str], judged: Mapping[str, int], measures: Sequence[str]) -> dict[str, float]:
    """The measures of one ranked list of document ids against one query's judgments."""
    relevant = {d for d, g in judged.items() if g >= 1}
    hits = [d in relevant for d in ranked]
    ideal = sorted((max(g, 0) for g in judged.values()), reverse=True)
    out: dict[str, float] = {}
    for m in measures:
        name, _, cut = m.partition("@")
        k = int(cut) if cut else len(ranked)
        if name == "P":
            out[m] = sum(hits[:k]) / k
        elif name == "recall":
            out[m] = sum(hits[:k]) / len(relevant) if relevant else 0.0
        elif name == "ndcg":
            best = _dcg(ideal[:k]) if cut else _dcg(ideal)
            out[m] = _dcg([max(judged.get(d, 0), 0) for d in ranked[:k]]) / best if best > 0 else 0.0
        elif name == "mrr":
            out[m] = next((1.0 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
        else:  # map
            found, total = 0, 0.0
            for i, h in enumerate(hits):
                if h:
                    found += 1
                    total += found / (i + 1)
            out[m] = total / len(relevant) if relevant else 0.0
    return out


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str] = ("ndcg@10", "recall@100", "mrr", "map")
             ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean over the judged queries, per query) for ``measures``."""
    _check(measures)
    if not qrels:
        raise ValueError("qrels judge no query")
    per_query = {q: query_measures(_ranked(run.get(q, {})), judged, measures) for q, judged in qrels.items()}
    mean = {m: sum(v[m] for v in per_query.values()) / len(per_query) for m in measures}
    return mean, per_query


def _lines(path: str | Path, fields: int, what: str) -> list[list[str]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != fields:
            raise ValueError(f"{path}:{n}: a {what} line has {fields} fields, this one has {len(parts)}: {line!r}")
        rows.append(parts)
    return rows


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid 0 docid grade``) or BEIR's TSV (``query-id corpus-id score``, a header line allowed)."""
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (3, 4):
            raise ValueError(f"{path}:{n}: a qrels line is 'qid 0 docid grade' (TREC) or 'qid docid grade' "
                             f"(BEIR), this one has {len(parts)} fields: {line!r}")
        qid, doc, grade = parts[0], parts[-2], parts[-1]
        try:
            out.setdefault(qid, {})[doc] = int(grade)
        except ValueError:
            if n == 1 and len(parts) == 3:  # BEIR's header
                continue
            raise ValueError(f"{path}:{n}: grade {grade!r} is not an integer") from None
    return out


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for qid, _, doc, _, score, _ in _lines(path, 6, "run ('qid Q0 docid rank score tag')"):
        out.setdefault(qid, {})[doc] = float(score)
    return out


def write_run(run: Run, path: str | Path, tag: str = "lmstack") -> None:
    """A TREC run file, written atomically."""
    path = Path(path)
    lines = [f"{q} Q0 {d} {r} {run[q][d]:.6f} {tag}" for q in run for r, d in enumerate(_ranked(run[q]), start=1)]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
