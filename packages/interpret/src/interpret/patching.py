"""Activation patching and causal tracing: which activations carry the information a prediction needs.

:func:`activation_patching` runs a corrupted prompt with one activation at a time, (layer, position), taken from
the clean prompt's run, and measures a metric of the output (Meng et al. 2022; Heimersheim and Nanda 2024, "How to
use and interpret activation patching", arXiv:2404.15255: "denoising"). :func:`causal_trace` is Meng et al.'s
causal tracing (ROME, arXiv:2202.05262): the corruption is Gaussian noise added to the subject's token embeddings,
averaged over ``samples`` draws, the metric the probability of the answer token, and with ``window`` a run of
neighbouring layers restored at once (ROME restores 10 for its attention and MLP traces).

    result = causal_trace(model, ids, subject=[1, 2, 3], target=paris_id, point="mlp_out", window=10)
    result.effects        # (L, T): the answer's probability with each (layer, position) restored
    result.clean, result.corrupt, result.normalized()    # baselines; (effects - corrupt) / (clean - corrupt)

Each layer's positions run as one batch (one row a position), so a trace costs ``L`` forwards of ``T`` rows (times
``samples``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from interpret.anatomy import Anatomy, anatomy, first_tensor
from interpret.cache import capture
from interpret.hooks import check_point, intervene
from specs.errors import ConfigError, ShapeError

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (B, T, V) -> (B,)


@dataclass(frozen=True)
class PatchResult:
    """``effects`` (L', T'): the metric with the activation at each (layer, position) patched in; ``clean`` and
    ``corrupt``: the metric of the unpatched runs; ``layers`` and ``positions``: what the rows and columns are."""

    effects: torch.Tensor
    clean: float
    corrupt: float
    layers: tuple[int, ...]
    positions: tuple[int, ...]

    def normalized(self) -> torch.Tensor:
        """(effects - corrupt) / (clean - corrupt): 1 where patching restores the clean run, 0 where it does
        nothing; NaN everywhere when the corruption changed nothing."""
        span = self.clean - self.corrupt
        return (self.effects - self.corrupt) / span if span != 0 else torch.full_like(self.effects, float("nan"))


def target_prob(target: int, position: int = -1) -> Metric:
    """A metric: the softmax probability of token ``target`` at ``position`` (default the last), fp32."""
    return lambda logits: torch.softmax(logits[:, position].float(), -1)[:, target]


def logit_diff(good: int, bad: int, position: int = -1) -> Metric:
    """A metric: logit of ``good`` minus logit of ``bad`` at ``position`` (e.g. IOI's correct minus wrong name)."""
    return lambda logits: (logits[:, position, good] - logits[:, position, bad]).float()


def _logits(model: nn.Module, ids: torch.Tensor, forward: dict[str, Any]) -> torch.Tensor:
    out = model(ids, **forward)
    return first_tensor(getattr(out, "logits", out))


def _window(layer: int, window: int, n_layers: int) -> range:
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _restoring(clean: Any, point: str, layer: int, window: int, n_layers: int, rows: torch.Tensor,
               cols: torch.Tensor) -> dict[tuple[str, int], Callable[[torch.Tensor], torch.Tensor]]:
    """The edits that put the clean run's ``point`` back at ``(rows, cols)`` (row r at position cols[r]) in the
    ``window`` layers around ``layer``."""
    def restore(h: torch.Tensor, at: int) -> torch.Tensor:
        h = h.clone()
        h[rows, cols] = clean[point, at][0, cols].to(h.dtype)
        return h

    return {(point, at): (lambda h, at=at: restore(h, at)) for at in _window(layer, window, n_layers)}


def _check(parts: Anatomy, point: str, window: int, layers: Sequence[int] | None, T: int,
           positions: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if point == "embed":
        raise ConfigError("point", "patching runs over the layers: 'resid_pre', 'resid_post', 'attn_out' or 'mlp_out'")
    check_point(parts, (point, 0))
    if window < 1:
        raise ConfigError("window", f"must be at least 1, got {window}")
    layers = tuple(range(parts.n_layers)) if layers is None else tuple(int(x) for x in layers)
    for layer in layers:
        check_point(parts, (point, layer))
    positions = tuple(range(T)) if positions is None else tuple(int(p) % T for p in positions)
    if any(not 0 <= p < T for p in positions):
        raise ConfigError("positions", f"the prompt has {T} tokens, got {positions}")
    return layers, positions


@torch.no_grad()
def activation_patching(model: nn.Module, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, metric: Metric, *,
                        point: str = "resid_post", layers: Sequence[int] | None = None,
                        positions: Sequence[int] | None = None, window: int = 1, parts: Anatomy | None = None,
                        **forward: Any) -> PatchResult:
    """The corrupted prompt run with the clean prompt's ``point`` patched in at each layer of ``layers`` (with
    ``window`` neighbouring layers) and each of ``positions``, one at a time; ``metric`` of each run's logits. Both
    prompts are (1, T), of the same length."""
    parts = parts or anatomy(model)
    if clean_ids.dim() != 2 or clean_ids.shape[0] != 1 or clean_ids.shape != corrupt_ids.shape:
        raise ShapeError(f"clean and corrupt prompts must both be (1, T) of one length, got {tuple(clean_ids.shape)} "
                         f"and {tuple(corrupt_ids.shape)}")
    T = clean_ids.shape[1]
    layers, positions = _check(parts, point, window, layers, T, positions)
    clean_cache = capture(model, clean_ids, points=(point,), parts=parts, **forward)
    clean = float(metric(clean_cache.logits)[0])
    corrupt = float(metric(_logits(model, corrupt_ids, forward))[0])
    rows = torch.arange(len(positions), device=clean_ids.device)
    cols = torch.tensor(positions, device=clean_ids.device)
    batch = corrupt_ids.expand(len(positions), T)
    effects = torch.empty(len(layers), len(positions))
    for i, layer in enumerate(layers):
        with intervene(parts, _restoring(clean_cache, point, layer, window, parts.n_layers, rows, cols)):
            effects[i] = metric(_logits(model, batch, forward)).float().cpu()
    return PatchResult(effects, clean, corrupt, layers, positions)


@torch.no_grad()
def causal_trace(model: nn.Module, input_ids: torch.Tensor, subject: Sequence[int], target: int, *,
                 noise: float = 3.0, samples: int = 10, seed: int = 0, point: str = "resid_post", window: int = 1,
                 layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                 parts: Anatomy | None = None, **forward: Any) -> PatchResult:
    """ROME's causal trace of ``input_ids`` (1, T): the probability of ``target`` at the last position, with the
    token embeddings at ``subject`` (positions) plus ``noise`` x (the embedding matrix's standard deviation) x N(0, 1),
    ``samples`` draws from ``seed`` averaged, and the clean run's ``point`` restored at each (layer, position) (with
    ``window`` neighbouring layers)."""
    parts = parts or anatomy(model)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ShapeError(f"causal_trace takes one prompt (1, T), got {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    subject = sorted({int(p) % T for p in subject})
    if not subject:
        raise ConfigError("subject", "names no positions: the corruption needs the subject's token positions")
    if samples < 1:
        raise ConfigError("samples", f"must be at least 1, got {samples}")
    layers, positions = _check(parts, point, window, layers, T, positions)
    metric = target_prob(target)
    clean_cache = capture(model, input_ids, points=(point,), parts=parts, **forward)
    clean = float(metric(clean_cache.logits)[0])
    weight = getattr(parts.embed, "weight", None)
    if weight is None:
        raise ConfigError("model", "the token embedding has no weight to take the noise scale from")
    scale = noise * float(weight.float().std())
    gen = torch.Generator().manual_seed(seed)
    draws = (torch.randn(samples, len(subject), weight.shape[1], generator=gen) * scale).to(weight.device)
    sub = torch.tensor(subject, device=input_ids.device)

    def corrupt_embed(rows_per_sample: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            h[:, sub] += draws.repeat_interleave(rows_per_sample, 0).to(h.dtype)
            return h

        return fn

    with intervene(parts, {("embed", 0): corrupt_embed(1)}):
        corrupt = float(metric(_logits(model, input_ids.expand(samples, T), forward)).mean())
    P = len(positions)
    rows = torch.arange(samples * P, device=input_ids.device)
    cols = torch.tensor(positions, device=input_ids.device).repeat(samples)
    batch = input_ids.expand(samples * P, T)
    effects = torch.empty(len(layers), P)
    for i, layer in enumerate(layers):
        edits = _restoring(clean_cache, point, layer, window, parts.n_layers, rows, cols)
        edits[("embed", 0)] = corrupt_embed(P)
        with intervene(parts, edits):
            effects[i] = metric(_logits(model, batch, forward)).float().view(samples, P).mean(0).cpu()
    return PatchResult(effects, clean, corrupt, layers, positions)
