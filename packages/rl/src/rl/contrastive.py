"""Embedding models trained on (query, positive) text pairs by contrastive learning: the ``lmstack.objectives``
plugin ``contrastive`` (``train.preference.method: contrastive``) and the ``lmstack.datasets`` plugin
``text_pairs`` (``data.dataset: text_pairs``).

The loss is InfoNCE with in-batch negatives (van den Oord et al. 2018, arXiv:1807.03748; Henderson et al. 2017),
which sentence-transformers calls MultipleNegativesRankingLoss and which trains E5, BGE and GTE: every query's
positive must win over the micro-batch's other positives, logits = cos(q_i, p_j) / ``train.preference.
temperature`` (0.05 by default: sentence-transformers' scale of 20). The negatives are the other pairs of the same
micro-batch (``data.batch_size`` split over ranks and ``train.grad_accum``), so larger micro-batches give harder
training; two pairs with the same positive count each other's as a negative.

The model is an encoder with ``embed(input_ids, attn_mask, normalize=True) -> (B, D)`` (``model.arch: encoder``,
lmstack-model's :class:`~model.encoder.TransformerEncoder`, pooled as its ``pooling`` says). Its checkpoints load in
lmstack-rag as ``lmstack:DIR`` embedders.

Data: each line of a ``.jsonl`` file (``data.path``: one file, or a directory of them) is ``{"query": "text",
"positive": "text"}`` (sentence-transformers' ``{"anchor", "positive"}`` too). Row ``2i`` of a batch is pair
``i``'s query, row ``2i + 1`` its positive, each its tokenizer's ids (no special tokens added) cut to
``data.seq_len``, right-padded as :func:`rl.data.padded` pads (labels are the ids, -100 on padding, and unused).
``data.batch_size`` counts pairs; ``val_fraction`` holds out a seeded share; the stream resumes exactly.
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
from specs.batch import Batch
from specs.config import RunConfig, TrainConfig
from specs.errors import ConfigError

FORMATS = '{"query", "positive"} or {"anchor", "positive"} (text)'
TextPair = tuple[list[int], list[int]]


class ContrastiveModule(nn.Module):
    """``forward(input_ids, labels, attn_mask) -> (loss, stats)`` on a micro-batch of (query, positive) rows."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if input_ids.shape[0] % 2:
            raise ValueError(f"a contrastive micro-batch holds (query, positive) row pairs; got {input_ids.shape[0]} "
                             "rows")
        emb_BD = self.model.embed(input_ids, attn_mask, normalize=True).float()
        q_ND, p_ND = emb_BD[0::2], emb_BD[1::2]
        sim_NN = q_ND @ p_ND.T
        target = torch.arange(sim_NN.shape[0], device=sim_NN.device)
        loss = F.cross_entropy(sim_NN / self.temperature, target)
        sim = sim_NN.detach()
        n = sim.shape[0]
        off = (sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1)
        stats = {"accuracy": (sim.argmax(dim=1) == target).float().mean(), "similarity/positive": sim.diagonal().mean(),
                 "similarity/negative": off}
        return loss, stats


class Contrastive(_PairObjective):
    """The ``lmstack.objectives`` plugin ``contrastive``: an embedding model trained by InfoNCE on text pairs."""

    name = "contrastive"

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

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        if not callable(getattr(model, "embed", None)):
            raise ConfigError("model.arch", f"contrastive trains a model with embed(); {type(model).__name__} has "
                                            "none: set model.arch: encoder")
        return ContrastiveModule(model, self.cfg.temperature)


class TextPairLoader(EpochLoader):
    """Iterable of paired Batch (query and positive rows alternate); build it with
    :func:`build_text_pair_dataloader`."""

    paired = True
    kind, unit = "text_pairs", "pairs"

    def __init__(self, pairs: list[TextPair], tokenizer: Any, *, seq_len: int, **kw: Any):
        self.seq_len = seq_len
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = int(pad) if pad is not None else 0  # masked anyway
        super().__init__(pairs, tokenizer, **kw)

    def _make(self, pairs: list[TextPair]) -> Batch:
        rows = [(ids[:self.seq_len], ids[:self.seq_len]) for pair in pairs for ids in pair]
        ids, labels, mask = padded(rows, self.seq_len, self.pad_id)
        return Batch(input_ids=ids, labels=labels, attention_mask=mask)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "seq_len": self.seq_len}


def _text_pair(line: str, where: str) -> dict[str, Any]:
    doc = json_line(line, where)
    if not isinstance(doc, Mapping):
        raise ConfigError("data.path", f"{where}: expected a JSON object, {FORMATS}; got {line[:80]!r}")
    query = doc.get("query", doc.get("anchor"))
    positive = doc.get("positive")
    for key, value in (("query", query), ("positive", positive)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("data.path", f"{where}: needs a non-empty text {key!r}; expected {FORMATS}")
    return {"query": query, "positive": positive}


def build_text_pair_dataloader(path: str | os.PathLike[str], batch_size: int = 32, seq_len: int = 512, *,
                               seed: int = 0, shuffle: bool = True, rank: int | None = None,
                               world_size: int | None = None, num_workers: int = 0, pack: bool = False,
                               doc_mask: bool = False, drop_last: bool = True, epochs: int | None = 1,
                               tokenizer: Any = None, val_fraction: float = 0.0, split: str = "train",
                               **_: Any) -> TextPairLoader:
    """A :class:`TextPairLoader` over the pairs in ``path`` (see the module docstring): ``batch_size`` pairs a
    batch. As the preference loader, the global batch is every rank's, so ``rank``, ``world_size`` and
    ``num_workers`` are accepted and unused; ``pack`` and ``doc_mask`` must be False."""
    tok = check_builder_args(batch_size, seq_len, seed, split, val_fraction, tokenizer, pack or doc_mask,
                             "each text of a pair is embedded alone (one a row)")
    records = read_jsonl(path, _text_pair, "text pairs", FORMATS)
    pairs = [(list(tok.encode(r["query"])), list(tok.encode(r["positive"]))) for _, r in records]
    pairs = [pairs[i] for i in split_indices(len(pairs), val_fraction, seed, split)]
    return TextPairLoader(pairs, tok, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle,
                          drop_last=drop_last, epochs=epochs, split=split, source=str(path))


build_text_pair_dataloader.paired = True  # type: ignore[attr-defined]  # train.run's preflight reads it
