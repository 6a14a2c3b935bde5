"""TransformerRewardModel: a decoder with a score head at each sequence's last real token (a reward model).

The :class:`~model.stack.TransformerStack` of :class:`~model.lm.TransformerLM` (causal) with a bias-free Linear
``score`` (D -> ``num_labels``, 1 for a reward) in place of the LM head, read at the last real token of each row,
so a reward scores the whole prompt + completion: transformers' ``LlamaForSequenceClassification``, the reward
model of RLHF (Ouyang et al. 2022, arXiv:2203.02155) that TRL's RewardTrainer trains. Tensor names are
transformers' (``model.*``, ``score.weight``), so its directories load here.

``from_pretrained(dir)`` reads a reward model saved by ``save_pretrained`` (or a training checkpoint of one), a
Hugging Face ``*ForSequenceClassification`` directory (Llama, Mistral), or a causal LM (an lmstack checkpoint or a
Hugging Face Llama / Mistral / GPT-2 directory): the trunk is the LM's and the score head starts at
``normal(0, init_std)`` as transformers initialises it, which is how a reward model is usually begun.

Shape legend: B batch, T tokens, D model width, C labels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model import checkpoint, pretrained
from model.heads import pool
from model.stack import TransformerStack
from specs.config import ModelConfig
from specs.errors import ConfigError
from tensor.init import init_weights

SCORE = "score.weight"


class TransformerRewardModel(nn.Module):
    """``scores_BC = rm(input_ids_BT, positions=None, attn_mask=None)``: the score head at each row's last real
    token (``attn_mask`` 1 = real, left or right padding; None: the last position)."""

    def __init__(self, cfg: ModelConfig, *, num_labels: int = 1):
        super().__init__()
        if not cfg.causal:
            raise ConfigError("model.causal", "a reward model is a causal decoder; this config has causal=False")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError("num_labels", f"expected an integer >= 1, got {num_labels!r}")
        self.config = cfg
        self.num_labels = num_labels
        self.model = TransformerStack(cfg)
        self.score = nn.Linear(cfg.d_model, num_labels, bias=False)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, self.config, generator=generator)
        with torch.no_grad():  # transformers' _init_weights: normal(0, initializer_range) for the score
            self.score.weight.normal_(0.0, self.config.init_std, generator=generator)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h_BTD = self.model(input_ids, positions=positions, attn_mask=attn_mask)
        return self.score(pool(h_BTD, attn_mask, "last"))

    def save_pretrained(self, directory: str | os.PathLike[str], *, max_shard_size: int | str = "5GB",
                        name: str | None = None, metadata: Mapping[str, Any] | None = None) -> Path:
        """An lmstack checkpoint directory (safetensors, config.json, modelcard.json with ``num_labels``),
        written atomically; ``from_pretrained`` reads it."""
        return pretrained.save(self, self.config, directory, build=type(self)._from_config,
                               max_shard_size=max_shard_size, name=name,
                               metadata={"num_labels": self.num_labels, **(metadata or {})})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", *, verify: bool = True, config: ModelConfig | None = None,
                        num_labels: int = 1) -> TransformerRewardModel:
        """A reward model from ``directory`` (see the module docstring). ``dtype``, ``device``, ``verify`` and
        ``config`` as for ``TransformerLM.from_pretrained``; ``num_labels`` is the new head's width when the
        directory holds a causal LM (a saved reward model keeps its own)."""
        if SCORE in _weight_names(directory):
            doc = checkpoint.read_config(directory)
            labels = len(doc.get("id2label") or {}) or int(doc.get("num_labels", 1))  # an HF directory's head

            def build(cfg: ModelConfig, meta: Mapping[str, Any]) -> TransformerRewardModel:
                return cls(cfg, num_labels=int(meta.get("num_labels", labels)))

            return pretrained.load(build, directory, dtype=dtype, device=device, verify=verify, config=config)
        from model.lm import TransformerLM

        lm = TransformerLM.from_pretrained(directory, dtype=dtype, device=device, verify=verify, config=config)
        with torch.device("meta"):
            out = cls(lm.config, num_labels=num_labels)
        out.model = lm.model  # the trunk as loaded; the score head is new
        weight = next(lm.parameters())
        out.score = nn.Linear(lm.config.d_model, num_labels, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            out.score.weight.normal_(0.0, lm.config.init_std)
        return out

    @classmethod
    def read_config(cls, directory: str | os.PathLike[str]) -> ModelConfig:
        """The ModelConfig of the reward model or causal LM in ``directory`` (its config.json alone)."""
        return pretrained.read_model_config(directory)

    @classmethod
    def _from_config(cls, cfg: ModelConfig, meta: Mapping[str, Any]) -> TransformerRewardModel:
        """The untrained model from_pretrained fills (num_labels from the card's metadata; an HF directory's from
        its score tensor, checked by the loader)."""
        return cls(cfg, num_labels=int(meta.get("num_labels", 1)))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, params={self.num_params():,}"


def _weight_names(directory: str | os.PathLike[str]) -> set[str]:
    """The tensor names of the checkpoint in ``directory``, from the safetensors headers alone."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in checkpoint.weight_files(directory):
        with safe_open(str(f), framework="pt") as st:
            names.update(st.keys())
    return names
