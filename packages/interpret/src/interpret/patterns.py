"""Attention patterns and what they say about each head (TransformerLens' ``cache["pattern", l]`` and
``detect_head``; Olsson et al. 2022's induction heads, arXiv:2209.11895).

``attention_patterns(model, ids)`` is every head's softmax(q k^T / sqrt(d) + mask) for one forward, (L, B, H, T, S)
float32. For an lmstack model the attention layers run, for that forward, through the kernel registry's attention
implementation ``interpret_pattern`` (this package's ``lmstack.kernels`` entry point): the reference attention in
float32, which also records the pattern it computes. A Hugging Face model is asked with ``output_attentions=True``
(loaded with ``attn_implementation="eager"``, which returns them).

``head_scores(patterns)`` reduces a pattern to per-head scores, (L, H) each, means over the queries t >= 1:
``previous_token`` (the attention from t to t - 1), ``first_token`` (to position 0: attention sinks), ``self`` (to
t), and ``entropy`` (nats). ``induction_scores(model, vocab)`` runs a random sequence repeated twice and scores, per
head, the mean attention from each token of the second copy to the token after its earlier occurrence (an
induction head's signature).

Shape legend: L layers, B batch, H heads, T queries, S keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from kernel import Implementation
from kernel.reference import attention_probs, repeat_kv
from specs.errors import ConfigError

IMPL = "interpret_pattern"
SCORES = ("previous_token", "first_token", "self", "entropy")  # head_scores' keys
_RECORD: ContextVar[list[torch.Tensor] | None] = ContextVar("interpret_attention_patterns", default=None)


def recording_attention(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor, *,
                        mask: torch.Tensor | None = None, causal: bool = False, scale: float | None = None,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference attention (float32), recording its pattern (B, H, T, S) while :func:`attention_patterns`
    listens."""
    probs = attention_probs(q_BHTDh, k_BKSDh, mask=mask, causal=causal, scale=scale, bias=bias)
    record = _RECORD.get()
    if record is not None:
        record.append(probs.detach())
    rep = q_BHTDh.shape[1] // k_BKSDh.shape[1]
    return (probs @ repeat_kv(v_BKSDh, rep).float()).to(q_BHTDh.dtype)


def kernels() -> list[Implementation]:
    """The ``lmstack.kernels`` entry point: the recording attention, by name only (lowest priority)."""
    return [Implementation(op="attention", name=IMPL, target="interpret.patterns:recording_attention",
                           priority=-100, backward=False,
                           description="the float32 reference attention, recording each pattern (lmstack-interpret)")]


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    """lmstack's attention modules (an ``attn_impl`` and a ``layer_idx``), in layer order."""
    found = [m for m in model.modules() if hasattr(m, "attn_impl") and hasattr(m, "layer_idx")]
    return sorted(found, key=lambda m: m.layer_idx)


def _pick(n: int, layers: Sequence[int] | None) -> list[int]:
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ConfigError("layers", f"{bad} are not layers of this model; expected 0 .. {n - 1}")
    return chosen


@torch.no_grad()
def attention_patterns(model: nn.Module, input_ids: torch.Tensor, *, layers: Sequence[int] | None = None,
                       **forward: Any) -> torch.Tensor:
    """Every head's attention pattern in ``model(input_ids, **forward)``: (len(layers), B, H, T, S) float32."""
    mods = _attention_layers(model)
    if not mods:
        return _hf_patterns(model, input_ids, layers, forward)
    chosen = _pick(len(mods), layers)
    saved = [m.attn_impl for m in mods]
    record: list[torch.Tensor] = []
    token = _RECORD.set(record)
    listened = sorted(set(chosen))  # the layers run in order, so their patterns arrive in this order
    try:
        for i in listened:
            mods[i].attn_impl = IMPL
        model(input_ids, **forward)
    finally:
        _RECORD.reset(token)
        for m, impl in zip(mods, saved):
            m.attn_impl = impl
    if len(record) != len(listened):
        raise ConfigError("model", f"{len(record)} attention patterns were recorded for {len(listened)} layers: the "
                          "forward did not run those layers' attention through the kernel registry")
    by_layer = dict(zip(listened, record))
    return torch.stack([by_layer[i] for i in chosen])


def _hf_patterns(model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int] | None,
                 forward: dict[str, Any]) -> torch.Tensor:
    out = model(input_ids, output_attentions=True, **forward)
    atts = getattr(out, "attentions", None)
    if not atts or any(a is None for a in atts):
        raise ConfigError("model", f"{type(model).__name__} returned no attention weights; load a transformers model "
                          "with attn_implementation='eager' (SDPA and flash attention do not form them)")
    return torch.stack([atts[i].float() for i in _pick(len(atts), layers)])


def head_scores(patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head scores of patterns (L, B, H, T, S) over a prompt (T == S), means over the queries t >= 1 and the
    batch: ``previous_token``, ``first_token``, ``self`` (attention to t - 1, to 0, to t) and ``entropy`` (of each
    query's row, in nats); each (L, H)."""
    if patterns.dim() != 5 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < 2:
        raise ConfigError("patterns", f"expected (L, B, H, T, T) with T >= 2 (a prompt's own attention), got "
                          f"{tuple(patterns.shape)}")
    p = patterns.float()[..., 1:, :]  # position 0 can attend only to itself: it says nothing of the head
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (L, B, H, T - 1)
    return {"previous_token": p.diagonal(0, -2, -1).mean((1, 3)), "first_token": p[..., 0].mean((1, 3)),
            "self": p.diagonal(1, -2, -1).mean((1, 3)), "entropy": entropy.mean((1, 3))}


def induction_scores(model: nn.Module, vocab_size: int, *, seq_len: int = 50, batch: int = 4, seed: int = 0,
                     bos: int | None = None, **forward: Any) -> torch.Tensor:
    """(L, H): each head's mean attention, over ``batch`` random sequences of ``seq_len`` ids repeated twice (after
    ``bos`` if given), from every token of the second copy to the token after its first occurrence."""
    if seq_len < 2 or batch < 1:
        raise ConfigError("seq_len", f"needs seq_len >= 2 and batch >= 1, got {seq_len} and {batch}")
    g = torch.Generator().manual_seed(seed)
    low = 0 if bos is None else 1
    r = torch.randint(low, vocab_size, (batch, seq_len), generator=g)
    ids = torch.cat([r, r], 1) if bos is None else torch.cat([torch.full((batch, 1), bos), r, r], 1)
    device = next(model.parameters()).device
    pat = attention_patterns(model, ids.to(device), **forward)  # (L, B, H, T, T)
    start = low + seq_len  # the second copy's first position
    t = torch.arange(start, ids.shape[1], device=pat.device)
    return pat[..., t, t - seq_len + 1].mean((1, 3))
