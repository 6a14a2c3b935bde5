"""The logit lens (nostalgebraist 2020): read every layer's residual stream through the model's own final norm and
unembedding, as if the layers after it were skipped, to see which next token the model "has in mind" at each depth.

    from interpret import logit_lens, lens_report
    logits = logit_lens(model, ids)                   # (L, B, T, V) fp32; logits[-1] is the model's own output
    kl_to_final(logits)                               # (L, B, T): how far each layer's guess is from the answer
    lens_report(model, tokenizer, "The capital of France is", k=3)   # what python -m interpret lens prints
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from interpret.anatomy import Anatomy, anatomy
from interpret.cache import capture
from specs.errors import ConfigError


@torch.no_grad()
def logit_lens(model: nn.Module, input_ids: torch.Tensor, *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, point: str = "resid_post", parts: Anatomy | None = None,
               **forward: Any) -> torch.Tensor:
    """(L, B, T', V) fp32 logits of the final norm and unembedding applied to ``point`` (``resid_post``: each
    layer's output; ``resid_pre``: its input) at ``layers`` (None: all) and ``positions`` (None: all T). At the last
    layer's ``resid_post`` this is the model's own output."""
    parts = parts or anatomy(model)
    if point not in ("resid_pre", "resid_post"):
        raise ConfigError("point", f"the lens reads the residual stream: 'resid_pre' or 'resid_post', got {point!r}")
    cache = capture(model, input_ids, points=(point,), layers=layers, parts=parts, **forward)
    resid = cache.stack(point)
    if positions is not None:
        resid = resid[:, :, list(positions)]
    return parts.logits(resid).float()


def kl_to_final(lens_logits: torch.Tensor) -> torch.Tensor:
    """(L, ...) KL(final || layer) in nats of each layer's lens distribution from the last one's (``lens_logits``
    (L, ..., V) with the model's output last): 0 at the last layer."""
    logp = torch.log_softmax(lens_logits.float(), -1)
    final = logp[-1:]
    return (final.exp() * (final - logp)).sum(-1)


def lens_report(model: nn.Module, tokenizer: Any, text: str, *, k: int = 3, position: int = -1,
                target: str | None = None) -> dict[str, Any]:
    """For ``text``'s token at ``position`` (default the last): each layer's ``k`` likeliest next tokens under the
    lens with their probabilities, its KL to the model's output, and with ``target`` (a string whose first token
    is taken) that token's probability and rank (0: top). A JSON-ready dict: ``tokens`` (the text's), ``layers``."""
    if k < 1:
        raise ConfigError("k", f"must be at least 1, got {k}")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ConfigError("text", "encodes to no tokens")
    if not -len(ids) <= position < len(ids):
        raise ConfigError("position", f"the text has {len(ids)} tokens, got position {position}")
    device = next(model.parameters()).device
    logits = logit_lens(model, torch.tensor([ids], device=device), positions=[position])[:, 0, 0]  # (L, V)
    probs = logits.softmax(-1)
    kl = kl_to_final(logits)
    want = None
    if target is not None:
        t_ids = list(tokenizer.encode(target))
        if not t_ids:
            raise ConfigError("target", f"{target!r} encodes to no tokens")
        want = t_ids[0]
    rows = []
    for layer in range(probs.shape[0]):
        p, top = probs[layer].topk(k)
        row: dict[str, Any] = {"layer": layer, "top": [(tokenizer.decode([int(t)]), float(q)) for t, q in zip(top, p)],
                               "kl_to_final": float(kl[layer])}
        if want is not None:
            row["target_prob"] = float(probs[layer, want])
            row["target_rank"] = int((probs[layer] > probs[layer, want]).sum())
        rows.append(row)
    return {"tokens": [tokenizer.decode([t]) for t in ids], "position": position % len(ids), "layers": rows}
