"""Output heads: sequence pooling and a classification head (the LM head is TransformerLM's ``lm_head`` Linear).

Pooling turns (B, T, D) hidden states into one (B, D) vector per sequence, ignoring padding: ``mean`` (masked mean,
Sentence-BERT, Reimers & Gurevych 2019, arXiv:1908.10084), ``first`` (BERT's [CLS] token, Devlin et al. 2019) or
``last`` (the last real token, as decoder-based embedders such as E5-Mistral use).

Shape legend: B batch, T tokens, D model width, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from specs.errors import ConfigError

POOLINGS = ("mean", "first", "last")


def pool(h_BTD: torch.Tensor, attn_mask_BT: torch.Tensor | None = None, method: str = "mean") -> torch.Tensor:
    """(B, T, D) -> (B, D) over the real tokens (``attn_mask_BT`` 1 = real; None = all real)."""
    if method not in POOLINGS:
        raise ConfigError("pooling", f"unknown pooling {method!r}; valid: {', '.join(POOLINGS)}")
    B, T, _ = h_BTD.shape
    valid_BT = (torch.ones(B, T, dtype=torch.bool, device=h_BTD.device) if attn_mask_BT is None
                else attn_mask_BT.to(device=h_BTD.device, dtype=torch.bool))
    if method == "mean":
        w_BT1 = valid_BT[:, :, None].to(h_BTD.dtype)
        return (h_BTD * w_BT1).sum(1) / w_BT1.sum(1).clamp_min(1)
    idx = torch.arange(T, device=h_BTD.device).expand(B, T)
    if method == "first":  # the first real token (left padding allowed)
        pick_B = torch.where(valid_BT, idx, T).min(dim=1).values.clamp_max(T - 1)
    else:
        pick_B = torch.where(valid_BT, idx, -1).max(dim=1).values.clamp_min(0)
    return h_BTD[torch.arange(B, device=h_BTD.device), pick_B]


class ClassificationHead(nn.Module):
    """Pooled (B, D) -> logits (B, C) through dropout and one Linear (``score``, as transformers names it)."""

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(d_model, num_labels)

    def forward(self, pooled_BD: torch.Tensor) -> torch.Tensor:
        return self.score(self.dropout(pooled_BD))
