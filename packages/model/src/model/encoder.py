"""TransformerEncoder: the bidirectional assembler for embeddings and sequence classification.

The same :class:`~model.stack.TransformerStack` as the decoder with ``cfg.causal=False`` (every token attends to
every real token; padding is masked from ``attn_mask``), then :func:`model.heads.pool` and an optional
:class:`~model.heads.ClassificationHead`. BERT (Devlin et al. 2019, arXiv:1810.04805) is the reference shape;
post-norm (``norm_position="post"``) gives its original residual wiring.

Shape legend: B batch, T tokens, D model width, C classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import pretrained
from model.heads import POOLINGS, ClassificationHead, pool
from model.stack import TransformerStack
from specs.config import ModelConfig
from specs.errors import ConfigError
from tensor.init import init_weights


class TransformerEncoder(nn.Module):
    """``hidden_BTD = enc(input_ids, attn_mask)``; ``enc.embed(...) -> (B, D)``; ``enc.classify(...) -> (B, C)``."""

    def __init__(self, cfg: ModelConfig, *, num_labels: int = 0, pooling: str = "mean"):
        super().__init__()
        if cfg.causal:
            raise ConfigError("model.causal", "the encoder is bidirectional: set causal=False (or use TransformerLM)")
        if pooling not in POOLINGS:
            raise ConfigError("pooling", f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.config = cfg
        self.pooling = pooling
        self.num_labels = num_labels
        self.model = TransformerStack(cfg)
        self.head = ClassificationHead(cfg.d_model, num_labels, cfg.dropout) if num_labels > 0 else None
        init_weights(self, cfg)

    def forward(self, input_ids: torch.Tensor, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids in [0, V) -> (B, T, D) contextual hidden states (``attn_mask`` (B, T): 1 = real, 0 =
        padding)."""
        return self.model(input_ids, positions=positions, attn_mask=attn_mask)

    def embed(self, input_ids: torch.Tensor, attn_mask: torch.Tensor | None = None, *,
              normalize: bool = False) -> torch.Tensor:
        """One (B, D) vector per sequence by ``self.pooling`` (L2-normalised with ``normalize``)."""
        pooled_BD = pool(self(input_ids, attn_mask), attn_mask, self.pooling)
        return F.normalize(pooled_BD, dim=-1) if normalize else pooled_BD

    def classify(self, input_ids: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, C); needs ``num_labels > 0``."""
        if self.head is None:
            raise ConfigError("num_labels", "this encoder has no classification head; build it with num_labels > 0")
        return self.head(self.embed(input_ids, attn_mask))

    def save_pretrained(self, directory: str | os.PathLike[str], *, max_shard_size: int | str = "5GB",
                        name: str | None = None, metadata: Mapping[str, Any] | None = None) -> Path:
        """lmstack checkpoint directory; the head's shape and pooling are kept in the model card."""
        meta = {"num_labels": self.num_labels, "pooling": self.pooling, **(metadata or {})}
        return pretrained.save(self, self.config, directory, build=type(self)._from_config,
                               max_shard_size=max_shard_size, name=name, metadata=meta)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", *, verify: bool = True) -> TransformerEncoder:
        """Load an encoder checkpoint (``dtype`` and ``device`` as for ``TransformerLM.from_pretrained``)."""
        return pretrained.load(cls._from_config, directory, dtype=dtype, device=device, verify=verify,
                               allow_hf=False)

    @classmethod
    def _from_config(cls, cfg: ModelConfig, meta: Mapping[str, Any]) -> TransformerEncoder:
        """The untrained encoder from_pretrained fills and save_pretrained checks against (head and pooling from
        the model card's metadata)."""
        return cls(cfg, num_labels=int(meta.get("num_labels", 0)), pooling=str(meta.get("pooling", "mean")))
