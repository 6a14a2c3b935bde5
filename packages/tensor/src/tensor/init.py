"""Weight initialisation schemes chosen by ``ModelConfig.init`` ('normal', 'small', 'mup').

Parameters are classified by name (Hugging Face Llama / GPT-2 names and common aliases) into roles, then each
role gets a standard deviation:

=============  ==========================  ==============================  ====================================
role           normal (GPT-2, nanoGPT)     small (Nguyen & Salazar 2019)   mup (Yang et al. 2022, Tensor Prog. V)
=============  ==========================  ==============================  ====================================
embedding      std                         sqrt(2 / (5 d))                 std (constant in width)
hidden         std                         sqrt(2 / (5 d))                 std / sqrt(m)
residual_out   std / sqrt(2 n_layers)      2 / (n_layers sqrt(d))  (Wang)  std / sqrt(m) / sqrt(2 n_layers)
head           std                         sqrt(2 / (5 d))                 0 (zero readout, muTransfer sec. 6)
bias / norm    zeros / ones                zeros / ones                    zeros / ones
=============  ==========================  ==============================  ====================================

``std`` is ``cfg.init_std``, ``d`` is ``cfg.d_model`` and ``m = d_model / base_d_model`` is muP's width multiplier
(base_d_model defaults to d_model, where muP coincides with 'normal' apart from the zero readout).
References: GPT-2 (Radford et al. 2019) scaled residual init; "Transformers without Tears" (Nguyen & Salazar 2019,
arXiv:1910.05895) small init; GPT-NeoX / Mesh-Transformer-JAX "wang_init" for output projections; muP:
arXiv:2203.03466. muP also rescales attention (1/d instead of 1/sqrt(d)), the output logits (1/m) and Adam
learning rates of hidden matrices (1/m); ``mup_width_mult`` gives m for the code that applies those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from specs.config import ModelConfig
from specs.errors import ConfigError

Role = Literal["bias", "norm", "embedding", "head", "residual_out", "hidden"]

# Module names (the dotted component before ".weight") whose output is added straight back to the residual stream.
RESIDUAL_PROJECTIONS: tuple[str, ...] = ("o_proj", "down_proj", "c_proj", "out_proj", "wo", "w2", "fc2",
                                         "dense_4h_to_h")
EMBEDDINGS: tuple[str, ...] = ("embed_tokens", "wte", "wpe", "tok_embeddings", "embed_positions", "embedding", "embed")
HEADS: tuple[str, ...] = ("lm_head", "output", "head", "score")

Params = torch.nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def param_role(name: str, shape: tuple[int, ...] | torch.Size) -> Role:
    """Classify a parameter by its dotted name and shape (see the module table)."""
    parts = name.split(".")
    leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    if len(shape) == 1:
        return "norm"
    if owner in EMBEDDINGS or leaf in EMBEDDINGS:
        return "embedding"
    if owner in HEADS or leaf in HEADS:
        return "head"
    if owner in RESIDUAL_PROJECTIONS or leaf in RESIDUAL_PROJECTIONS:
        return "residual_out"
    return "hidden"


def mup_width_mult(cfg: ModelConfig, base_d_model: int | None = None) -> float:
    """muP width multiplier m = d_model / base_d_model (1.0 when no base width is given)."""
    base = cfg.d_model if base_d_model is None else base_d_model
    if base <= 0:
        raise ConfigError("base_d_model", f"must be > 0, got {base}")
    return cfg.d_model / base


def param_std(role: Role, cfg: ModelConfig, *, base_d_model: int | None = None) -> float | None:
    """Init std for ``role`` under ``cfg.init``; None for roles with a constant init (bias: 0, norm: 1)."""
    if role in ("bias", "norm"):
        return None
    std, d, n = cfg.init_std, cfg.d_model, cfg.n_layers
    if cfg.init == "normal":
        return std / math.sqrt(2 * n) if role == "residual_out" else std
    if cfg.init == "small":
        return 2.0 / (n * math.sqrt(d)) if role == "residual_out" else math.sqrt(2.0 / (5.0 * d))
    if cfg.init == "mup":
        m = mup_width_mult(cfg, base_d_model)
        if role == "embedding":
            return std
        if role == "head":
            return 0.0
        hidden = std / math.sqrt(m)
        return hidden / math.sqrt(2 * n) if role == "residual_out" else hidden
    raise ConfigError("model.init", f"unknown init {cfg.init!r}; valid: normal, small, mup")


def _named(params: Params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, torch.nn.Module):
        return list(params.named_parameters())  # de-duplicates tied weights (first name wins)
    if isinstance(params, Mapping):
        return list(params.items())
    return list(params)


@torch.no_grad()
def init_weights(params: Params, cfg: ModelConfig, *, base_d_model: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, Role]:
    """Initialise parameters in place under ``cfg.init``; returns each name's role (for logging and tests).

    ``params`` is a module, a name -> tensor mapping or (name, tensor) pairs. Tied weights are initialised once.
    """
    roles: dict[str, Role] = {}
    seen: set[int] = set()
    for name, p in _named(params):
        if id(p) in seen:
            continue
        seen.add(id(p))
        role = param_role(name, p.shape)
        roles[name] = role
        std = param_std(role, cfg, base_d_model=base_d_model)
        if role == "bias":
            p.zero_()
        elif role == "norm":
            p.fill_(1.0)
        elif std == 0.0:
            p.zero_()
        else:
            p.normal_(0.0, std, generator=generator)
    return roles
