"""Re-ranking retrieved chunks with a cross-encoder: the query and each passage read together by one model
(Nogueira and Cho 2019, arXiv:1901.04085), which orders a short candidate list better than the embedding or BM25
scores that found it.

``CrossEncoderReranker(DIR)`` loads a transformers sequence-classification directory with one output, as the
cross-encoders sentence-transformers publishes are (ms-marco MiniLM, BGE rerankers); the score of a (query,
passage) pair is that output's logit, as ``sentence_transformers.CrossEncoder.predict`` gives it with an identity
activation (the sigmoid it applies by default changes no ranking). Needs ``pip install lmstack-rag[hf]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rag.embed import _pick_device
from rag.index import Hit
from specs.errors import ConfigError


class CrossEncoderReranker:
    """``reranker.rerank(query, hits, k)``: ``hits`` re-ordered by the cross-encoder's score, best first."""

    def __init__(self, directory: str | Path, *, device: str = "auto", batch_size: int = 32,
                 max_tokens: int = 512):
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:  # the optional extra
            raise ConfigError("reranker", "cross-encoders need transformers: pip install 'lmstack-rag[hf]'") from exc
        path = Path(directory)
        if not (path / "config.json").is_file():
            raise ConfigError("reranker", f"{path} has no config.json: expected a transformers sequence-"
                                          "classification directory (a cross-encoder)")
        self.device = _pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ConfigError("reranker", f"{path} has {self.model.config.num_labels} outputs; a cross-encoder "
                                          "reranker scores with one")
        self.batch_size, self.max_tokens = batch_size, max_tokens

    @torch.no_grad()
    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance logit per passage (N,) float32, higher is more relevant."""
        out = []
        for i in range(0, len(passages), self.batch_size):
            part = list(passages[i:i + self.batch_size])
            enc = self.tokenizer([query] * len(part), part, padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            out.append(self.model(**enc).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """``hits`` ordered by :meth:`score` (ties keep their order), the first ``k``; each hit's ``score`` is the
        cross-encoder's and its ``ranks`` gain ``rerank``."""
        scores = self.score(query, [h.chunk.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])[:k]
        return [dataclasses.replace(hits[i], score=float(scores[i]), ranks={**hits[i].ranks, "rerank": n})
                for n, i in enumerate(order, start=1)]
