"""Hard-negative mining: (query, positive) pairs -> records with the passages that look relevant to each query and
are not its positives, the training data of contrastive embedding models (DPR, Karpukhin et al. 2020; NV-Retriever,
Moreira et al. 2024, arXiv:2407.15831, whose TopK-PercPos is ``relative_margin=0.05``).

The selection is sentence-transformers' ``mine_hard_negatives`` (``output_format="n-tuple"``), option for option:
the corpus is the given passages plus every positive, deduplicated; each unique query's candidates are its
``range_max + (most positives any query has)`` best-scoring passages; its positives are never candidates; a
candidate scoring within ``absolute_margin`` of the query's lowest positive score, or above that score less
``relative_margin`` of its magnitude, or above ``max_score`` or below ``min_score``, is dropped; of the rest,
ranked, the first ``range_min`` are skipped and ``num_negatives`` taken, the best (``top``) or at random
(``random``, seeded). A pair whose query ends up with fewer is left out (``keep_short=True`` keeps it with what
it has: lmstack-rl's trainer takes records with any number of negatives). Scores are an embedder's cosine
similarities (queries embedded as ``query``, passages as ``document``) or BM25's (``embedder=None``; a passage
sharing no term with the query is never a negative), whose margins are then in BM25 units. The records are
lmstack-rl's ``text_pairs`` format, ``{"query", "positive", "negatives": [...]}``, in the pairs' order.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rag.embed import Embedder
from rag.sparse import BM25Index
from specs.errors import ConfigError

_CHUNK = 1024  # queries scored at once: memory is this times the corpus


@dataclass
class MiningReport:
    """What mining kept and why it dropped candidates (counts over every query's candidate list)."""

    records: int = 0
    short: int = 0  # pairs whose query had fewer than num_negatives negatives
    skipped: dict[str, int] = field(default_factory=dict)  # candidates dropped by margin / max_score / min_score


def mine_hard_negatives(pairs: Sequence[tuple[str, str]], *, embedder: Embedder | None = None,
                        corpus: Sequence[str] = (), num_negatives: int = 3, range_min: int = 0,
                        range_max: int | None = None, max_score: float | None = None, min_score: float | None = None,
                        absolute_margin: float | None = None, relative_margin: float | None = None,
                        sampling_strategy: Literal["top", "random"] = "top", seed: int = 0,
                        keep_short: bool = False, bm25: dict[str, Any] | None = None,
                        report: MiningReport | None = None) -> list[dict[str, Any]]:
    """Records ``{"query", "positive", "negatives"}`` for ``pairs`` (see the module docstring). ``bm25``: the
    options of :meth:`BM25Index.build` when ``embedder`` is None. ``report`` is filled in when given."""
    if not pairs:
        raise ValueError("no (query, positive) pairs to mine negatives for")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    if sampling_strategy not in ("top", "random"):
        raise ValueError(f"unknown sampling_strategy {sampling_strategy!r}; valid: top, random")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got {range_min}")
    rep = report if report is not None else MiningReport()
    passages = list(dict.fromkeys([*corpus, *(p for _, p in pairs)]))
    where = {text: i for i, text in enumerate(passages)}
    queries = list(dict.fromkeys(q for q, _ in pairs))
    positives: dict[str, list[int]] = {q: [] for q in queries}
    for q, p in pairs:
        if where[p] not in positives[q]:
            positives[q].append(where[p])
    most = max(len(v) for v in positives.values())
    if range_max is None:
        filtered = absolute_margin is not None or relative_margin is not None or max_score is not None
        range_max = range_min + num_negatives * (10 if filtered else 1) + most
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got {range_min} and {range_max}")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine {num_negatives} negatives per query from the {range_max - range_min} "
                         f"candidates between range_min={range_min} and range_max={range_max}")

    score = _scorer(queries, passages, embedder, bm25)
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {}
    for start in range(0, len(queries), _CHUNK):
        block = queries[start:start + _CHUNK]
        raw_QN = score(start, len(block))
        k = min(range_max + most, len(passages))
        cand, idx = torch.topk(raw_QN, k=k, dim=1)
        if k < range_max + most:  # as sentence-transformers pads a short corpus
            pad = range_max + most - k
            cand = torch.cat([cand, cand.new_full((len(block), pad), -float("inf"))], 1)
            idx = torch.cat([idx, idx.new_full((len(block), pad), -1)], 1)
        for r, q in enumerate(block):
            pos = torch.tensor(positives[q])
            cand[r, torch.isin(idx[r], pos)] = -float("inf")
            cand[r, idx[r] == -1] = -float("inf")
            if embedder is None:  # BM25: a passage sharing no term with the query is no candidate at all
                cand[r, cand[r] <= 0] = -float("inf")
            lowest = raw_QN[r, pos].min()
            drops = {"absolute_margin": (cand[r] + absolute_margin > lowest) if absolute_margin is not None else None,
                     "relative_margin": (cand[r] > lowest - lowest.abs() * relative_margin)
                     if relative_margin is not None else None}
            for name, mask in drops.items():
                if mask is not None:
                    _drop(cand[r], mask, name, rep)
            if max_score is not None:
                _drop(cand[r], cand[r] > max_score, "max_score", rep)
            if min_score is not None:
                _drop(cand[r], cand[r] < min_score, "min_score", rep)
        best, local = torch.topk(cand, k=range_max, dim=1)
        best, picked = best[:, range_min:], idx.gather(1, local)[:, range_min:]
        for r, q in enumerate(block):
            if sampling_strategy == "top":
                keep = list(range(num_negatives))
            else:  # sentence-transformers' random: among the finite candidates where there are enough
                options = max(int(torch.isfinite(best[r]).sum()), num_negatives)
                keep = sorted(rng.sample(range(options), k=num_negatives))
            chosen[q] = [int(picked[r, j]) for j in keep if torch.isfinite(best[r, j])]

    out = []
    for q, p in pairs:
        negs = chosen[q]
        if len(negs) < num_negatives:
            rep.short += 1
            if not keep_short:
                continue
        out.append({"query": q, "positive": p, "negatives": [passages[i] for i in negs]})
    rep.records = len(out)
    return out


def read_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(query, positive) from a JSONL file: ``{"query" (or "anchor"), "positive"}`` a line (other keys, such as
    existing negatives, are ignored); a bad line is a ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("pairs", f"{p}: no such file; expected JSONL with a query and a positive a line")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError("pairs", f"{p}:{n}: not JSON ({exc.msg})") from None
        q = doc.get("query", doc.get("anchor")) if isinstance(doc, dict) else None
        pos = doc.get("positive") if isinstance(doc, dict) else None
        if not (isinstance(q, str) and q.strip() and isinstance(pos, str) and pos.strip()):
            raise ConfigError("pairs", f'{p}:{n}: expected {{"query" (or "anchor"): text, "positive": text}}, got '
                                       f"{line[:80]!r}")
        out.append((q, pos))
    if not out:
        raise ConfigError("pairs", f"{p} holds no pairs")
    return out


def _drop(row: torch.Tensor, mask: torch.Tensor, name: str, rep: MiningReport) -> None:
    hit = mask & torch.isfinite(row)
    rep.skipped[name] = rep.skipped.get(name, 0) + int(hit.sum())
    row[mask] = -float("inf")


def _scorer(queries: list[str], passages: list[str], embedder: Embedder | None,
            bm25: dict[str, Any] | None) -> Any:
    """``score(start, n) -> (n, N)`` float32 tensor: queries[start:start + n] against every passage."""
    if embedder is not None:
        docs_ND = torch.from_numpy(_unit(embedder.embed(passages, kind="document")))
        qs_QD = torch.from_numpy(_unit(embedder.embed(queries, kind="query")))
        return lambda start, n: qs_QD[start:start + n] @ docs_ND.T
    index = BM25Index.build(passages, **(bm25 or {}))
    return lambda start, n: torch.from_numpy(index.scores(queries[start:start + n]).astype(np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
