"""What a training step feeds the model: a normalised ``specs.batch.Batch`` and the module whose ``forward`` is the
loss (so DDP's and FSDP's forward hooks wrap the loss computation, not just a logits call).

``LossModule(model)(input_ids, labels, **kw)`` returns ``model.loss(input_ids, labels, **kw)`` when the model has a
``loss`` method (``model.lm.TransformerLM``: its fused linear + cross-entropy kernels apply), else the mean
cross-entropy of ``model(input_ids, **kw)``'s logits over targets that are not ``IGNORE_INDEX``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specs.batch import IGNORE_INDEX, Batch


class LossModule(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP/FSDP hooks (which run on ``forward``) see the loss computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._has_loss = callable(getattr(model, "loss", None))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        if self._has_loss:
            return self.model.loss(input_ids, labels, **kw)
        logits = self.model(input_ids, **kw)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def as_batch(batch: Any) -> Batch:
    """A specs Batch from a Batch, a mapping with ``input_ids`` (and ``labels``...), a tuple or a tensor."""
    if isinstance(batch, Batch):
        b = batch
    elif isinstance(batch, Mapping):
        b = Batch(**{k: v for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask", "positions",
                                                              "document_ids", "advantages")})
    elif isinstance(batch, (tuple, list)):
        b = Batch(*batch)
    elif isinstance(batch, torch.Tensor):
        b = Batch(input_ids=batch)
    else:
        raise TypeError(f"cannot train on a {type(batch).__name__}; expected a specs.batch.Batch")
    if b.labels is None:  # next-token targets of the ids themselves; the last position has none
        ignore = torch.full_like(b.input_ids[:, :1], IGNORE_INDEX)
        b = Batch(**{**b.as_dict(), "labels": torch.cat([b.input_ids[:, 1:], ignore], dim=1)})
    return b
