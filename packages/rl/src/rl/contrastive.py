"""Embedding models trained on (query, positive) text pairs, with or without hard negatives, by contrastive
learning: the ``lmstack.objectives`` plugin ``contrastive`` (``train.preference.method: contrastive``) and the
``lmstack.datasets`` plugin ``text_pairs`` (``data.dataset: text_pairs``).

The loss is InfoNCE with in-batch negatives (van den Oord et al. 2018, arXiv:1807.03748; Henderson et al. 2017),
which sentence-transformers calls MultipleNegativesRankingLoss and which trains E5, BGE and GTE: every query's
positive must win over every other candidate of the micro-batch, logits = cos(q_i, c_j) / ``train.preference.
temperature`` (0.05 by default: sentence-transformers' scale of 20). The candidates are the micro-batch's
positives and its hard negatives: each record may carry its own mined negatives (Karpukhin et al. 2020's DPR, E5's
and BGE's fine-tuning; sentence-transformers' (anchor, positive, negative...) columns), which then compete with
every query of the micro-batch, as in sentence-transformers. The other negatives are the other pairs of the same
micro-batch (``data.batch_size`` split over ranks and ``train.grad_accum``), so larger micro-batches give harder
training; two pairs with the same positive count each other's as a negative.

The model is an encoder with ``embed(input_ids, attn_mask, normalize=True) -> (B, D)`` (``model.arch: encoder``,
lmstack-model's :class:`~model.encoder.TransformerEncoder`, pooled as its ``pooling`` says). Its checkpoints load in
lmstack-rag as ``lmstack:DIR`` embedders.

Data: each line of a ``.jsonl`` file (``data.path``: one file, or a directory of them) is ``{"query": "text",
"positive": "text"}`` (sentence-transformers' ``{"anchor", "positive"}`` too), optionally with hard negatives:
``"negative": "text"`` or a list, ``"negatives": [...]``, or sentence-transformers' ``"negative_1"``,
``"negative_2"``, ... columns. Records may carry different numbers of negatives. A record's rows are consecutive:
its query, its positive, then its negatives, each its tokenizer's ids (no special tokens added) cut to
``data.seq_len``, right-padded as :func:`rl.data.padded` pads. A query row's labels are all -100 and a candidate
row's labels are its ids (-100 on padding): that is how the module tells queries from candidates, and
:meth:`Contrastive.units` counts records. ``data.batch_size`` counts records; ``val_fraction`` holds out a seeded
share; the stream resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.data import EpochLoader, check_builder_args, json_line, padded, read_jsonl, split_indices
from rl.objectives import _DPO_ONLY, _KTO_ONLY, _check_common, _only_defaults, _PairObjective
from specs.batch import IGNORE_INDEX, Batch
from specs.config import RunConfig, TrainConfig
from specs.errors import ConfigError

FORMATS = ('{"query", "positive"} or {"anchor", "positive"} (text), optionally with hard negatives: "negative" (a '
           'text or a list), "negatives" (a list) or "negative_1", "negative_2", ...')
Record = tuple[list[int], ...]  # query ids, positive ids, then each negative's ids


class ContrastiveModule(nn.Module):
    """``forward(input_ids, labels, attn_mask) -> (loss, stats)`` on a micro-batch of records' rows: each record a
    query row (labels all -100), its positive, then its hard negatives (see the module docstring)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        is_query = query_rows(labels)
        starts = is_query.nonzero().flatten()
        if not bool(is_query[0]) or bool(is_query[-1]) or bool((starts.diff() < 2).any()):
            raise ConfigError("train.grad_accum", f"a contrastive micro-batch holds whole records (a query row, "
                              f"its positive, its negatives); these {input_ids.shape[0]} rows start or end inside "
                              "one: with records of different sizes use train.grad_accum 1 and one rank, else "
                              "pick data.batch_size so each micro-batch and rank gets whole records")
        emb_BD = self.model.embed(input_ids, attn_mask, normalize=True).float()
        cand = ~is_query
        q_ND, c_MD = emb_BD[is_query], emb_BD[cand]
        # each query's positive is the row after it: its index among the candidate rows
        target = torch.cumsum(cand.long(), 0)[starts + 1] - 1
        sim_NM = q_ND @ c_MD.T
        loss = F.cross_entropy(sim_NM / self.temperature, target)
        sim = sim_NM.detach()
        n, m = sim.shape
        pos = sim.gather(1, target[:, None]).squeeze(1)
        stats = {"accuracy": (sim.argmax(dim=1) == target).float().mean(), "similarity/positive": pos.mean(),
                 "similarity/negative": (sim.sum() - pos.sum()) / max(n * (m - 1), 1)}
        own = torch.cumsum(is_query.long(), 0)[cand] - 1  # the record each candidate row belongs to
        hard = (own[None, :] == torch.arange(n, device=sim.device)[:, None])
        hard[torch.arange(n, device=sim.device), target] = False
        if bool(hard.any()):
            stats["similarity/hard_negative"] = sim[hard].mean()
        return loss, stats


def query_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows that are queries (every label -100; a candidate row keeps its ids as labels)."""
    return (labels == IGNORE_INDEX).all(dim=1)


class Contrastive(_PairObjective):
    """The ``lmstack.objectives`` plugin ``contrastive``: an embedding model trained by InfoNCE on text pairs."""

    name = "contrastive"
    checks_groups = True  # records are 2 + (their negatives) rows: the module checks micro-batches hold whole ones

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        if run.data.dataset != "text_pairs":
            raise ConfigError("data.dataset", "contrastive trains on (query, positive) text pairs: data.dataset: "
                                              f"text_pairs (got {run.data.dataset!r})")
        self.check_options()
        if run.model.arch != "encoder":
            raise ConfigError("model.arch", f"contrastive trains an embedding model: model.arch: encoder (with "
                                            f"model.causal: false), got {run.model.arch!r}")

    def check_options(self) -> None:
        _only_defaults(self.cfg, "contrastive", ("beta", "loss_type", "label_smoothing", "sft_weight", "reference",
                                                 "center_rewards", "simpo_gamma", *_KTO_ONLY, *_DPO_ONLY),
                       "its only option is temperature")

    @staticmethod
    def units(labels: torch.Tensor) -> torch.Tensor:
        """Records: a micro-batch's query rows."""
        return query_rows(labels).sum()

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        if not callable(getattr(model, "embed", None)):
            raise ConfigError("model.arch", f"contrastive trains a model with embed(); {type(model).__name__} has "
                                            "none: set model.arch: encoder")
        return ContrastiveModule(model, self.cfg.temperature)


class TextPairLoader(EpochLoader):
    """Iterable of Batch of records' rows (a query, its positive, its negatives); build it with
    :func:`build_text_pair_dataloader`."""

    paired = True  # rows come in records that micro-batches and ranks must not split
    kind, unit = "text_pairs", "pairs"

    def __init__(self, records: list[Record], tokenizer: Any, *, seq_len: int, **kw: Any):
        self.seq_len = seq_len
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = int(pad) if pad is not None else 0  # masked anyway
        super().__init__(records, tokenizer, **kw)

    def _make(self, records: list[Record]) -> Batch:
        rows = []
        for query, *candidates in records:
            rows.append((query[:self.seq_len], []))  # a query row: every label -100
            rows += [(ids[:self.seq_len], ids[:self.seq_len]) for ids in candidates]
        ids, labels, mask = padded(rows, self.seq_len, self.pad_id)
        return Batch(input_ids=ids, labels=labels, attention_mask=mask)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "seq_len": self.seq_len}


def _negatives(doc: Mapping[str, Any], where: str) -> list[str]:
    """A record's hard negatives, in order: ``negative`` (a text or a list), ``negatives``, ``negative_1``, ..."""
    out: list[Any] = []
    for key in ("negative", "negatives"):
        value = doc.get(key)
        if value is not None:
            out += value if isinstance(value, list) else [value]
    numbered = sorted((int(k.removeprefix("negative_")), k) for k in doc
                      if k.startswith("negative_") and k.removeprefix("negative_").isdigit())
    out += [doc[k] for _, k in numbered]
    for value in out:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("data.path", f"{where}: a hard negative must be a non-empty text, got {value!r}; "
                                           f"expected {FORMATS}")
    return out


def _text_pair(line: str, where: str) -> dict[str, Any]:
    doc = json_line(line, where)
    if not isinstance(doc, Mapping):
        raise ConfigError("data.path", f"{where}: expected a JSON object, {FORMATS}; got {line[:80]!r}")
    query = doc.get("query", doc.get("anchor"))
    positive = doc.get("positive")
    for key, value in (("query", query), ("positive", positive)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("data.path", f"{where}: needs a non-empty text {key!r}; expected {FORMATS}")
    return {"query": query, "positive": positive, "negatives": _negatives(doc, where)}


def build_text_pair_dataloader(path: str | os.PathLike[str], batch_size: int = 32, seq_len: int = 512, *,
                               seed: int = 0, shuffle: bool = True, rank: int | None = None,
                               world_size: int | None = None, num_workers: int = 0, pack: bool = False,
                               doc_mask: bool = False, drop_last: bool = True, epochs: int | None = 1,
                               tokenizer: Any = None, val_fraction: float = 0.0, split: str = "train",
                               **_: Any) -> TextPairLoader:
    """A :class:`TextPairLoader` over the records in ``path`` (see the module docstring): ``batch_size`` records
    a batch. As the preference loader, the global batch is every rank's, so ``rank``, ``world_size`` and
    ``num_workers`` are accepted and unused; ``pack`` and ``doc_mask`` must be False."""
    tok = check_builder_args(batch_size, seq_len, seed, split, val_fraction, tokenizer, pack or doc_mask,
                             "each text of a pair is embedded alone (one a row)")
    records = []
    for where, r in read_jsonl(path, _text_pair, "text pairs", FORMATS):
        texts = [r["query"], r["positive"], *r["negatives"]]
        ids = [list(tok.encode(t)) for t in texts]
        if not all(ids):
            raise ConfigError("data.path", f"{where}: a text encodes to no tokens with this tokenizer; expected "
                                           "texts with content")
        records.append(tuple(ids))
    records = [records[i] for i in split_indices(len(records), val_fraction, seed, split)]
    return TextPairLoader(records, tok, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle,
                          drop_last=drop_last, epochs=epochs, split=split, source=str(path))


build_text_pair_dataloader.paired = True  # type: ignore[attr-defined]  # train.run's preflight reads it
