"""Where a causal LM keeps the parts interpretability reads: its token embedding, its decoder layers (the residual
stream runs through them), their attention and MLP sublayers, the final norm and the unembedding.

:func:`anatomy` finds them by attribute path in lmstack's TransformerLM and in the Hugging Face layouts that share
one (Llama, Mistral, Qwen and Gemma keep ``model.layers`` / ``model.norm`` / ``lm_head``; GPT-2 ``transformer.h`` /
``transformer.ln_f``; GPT-NeoX ``gpt_neox.layers`` / ``gpt_neox.final_layer_norm`` / ``embed_out``), or takes them
as given (:class:`Anatomy`), so every tool here works on any of them without importing their packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specs.errors import ConfigError

# (layers, final norm, unembedding, token embedding) attribute paths, first match wins
LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("model.layers", "model.norm", "lm_head", "model.embed_tokens"),  # TransformerLM, HF Llama family
    ("transformer.h", "transformer.ln_f", "lm_head", "transformer.wte"),  # HF GPT-2, GPT-J
    ("gpt_neox.layers", "gpt_neox.final_layer_norm", "embed_out", "gpt_neox.embed_in"),  # HF GPT-NeoX, Pythia
)
ATTENTION = ("self_attn", "attn", "attention")
MLPS = ("mlp", "feed_forward")


@dataclass(frozen=True)
class Anatomy:
    """The parts of one model: ``layers`` (its decoder layers in order), ``norm`` (the final norm, None when the
    model has none), ``unembed`` (hidden -> logits) and ``embed`` (the token embedding)."""

    layers: tuple[nn.Module, ...]
    norm: nn.Module | None
    unembed: nn.Module
    embed: nn.Module

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def sublayer(self, i: int, kind: str) -> nn.Module:
        """Layer ``i``'s attention (``kind`` "attn") or MLP ("mlp") module; ConfigError when it has none by the
        usual names."""
        names = ATTENTION if kind == "attn" else MLPS
        for name in names:
            m = getattr(self.layers[i], name, None)
            if isinstance(m, nn.Module):
                return m
        raise ConfigError(kind, f"layer {i} ({type(self.layers[i]).__name__}) has no {kind} sublayer named one of "
                                f"{names}")

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The logits the model would give if ``resid`` (..., D) were its last layer's output: the final norm, then
        the unembedding (the logit lens)."""
        h = resid if self.norm is None else self.norm(resid)
        return self.unembed(h)


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def anatomy(model: nn.Module) -> Anatomy:
    """The model's :class:`Anatomy`, by the layouts in :data:`LAYOUTS`; ConfigError naming them when none fits, and
    for a TransformerLM whose final norm is folded into its head (``fold_norms``, inference only)."""
    if isinstance(model, Anatomy):
        return model
    if getattr(getattr(model, "model", None), "norm_folded", False):
        raise ConfigError("model", "its final norm is folded into lm_head (fold_norms, for inference): the lens "
                                   "needs the norm apart; use a model that was not folded")
    for layers, norm, unembed, embed in LAYOUTS:
        found = [_get(model, p) for p in (layers, norm, unembed, embed)]
        if isinstance(found[0], nn.ModuleList) and isinstance(found[2], nn.Module) and isinstance(found[3],
                                                                                                   nn.Module):
            return Anatomy(tuple(found[0]), found[1], found[2], found[3])
    raise ConfigError("model", f"{type(model).__name__} has none of the known layouts (layers, final norm, "
                               f"unembedding, embedding): {[lay for lay in LAYOUTS]}; pass an Anatomy(...) instead")


def first_tensor(output: Any) -> torch.Tensor:
    """A module output's hidden states: the tensor itself, or the first element of a tuple (HF decoder layers)."""
    return output[0] if isinstance(output, (tuple, list)) else output
