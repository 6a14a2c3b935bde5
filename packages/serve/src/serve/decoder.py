"""The batched autoregressive decode loop over a static KV cache, for any specs LanguageModel.

One prefill forward over the (left-padded) prompts fills the cache; each step then feeds one token per row. Rows
that finished keep being fed a pad token (the batch shape stays fixed, as in Hugging Face's ``generate``) and
their samples are ignored. Left padding is described by ``attn_mask`` (B, S+T), 1 for real tokens, which grows by
one column per step; the model derives positions from it.

Legend: B rows, T prompt tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from serve.sampling import SamplingParams, apply_penalties, sample, token_counts
from specs.errors import ConfigError, ShapeError


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def last_logits(model: Any, ids_BT: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The last position's logits of ``model(ids_BT, **kwargs)``, (B, V) fp32. Where the model takes transformers'
    ``logits_to_keep`` (TransformerLM does) its LM head runs on that position alone: a prefill then neither
    computes nor holds the (B, T, V) logits."""
    if keeps_logits(model):
        kwargs["logits_to_keep"] = 1
    return model(ids_BT, **kwargs)[:, -1].float()


def keeps_logits(model: Any) -> bool:
    """Whether ``model``'s forward names a ``logits_to_keep`` argument."""
    return _forward_keeps_logits(type(model))


@functools.cache
def _forward_keeps_logits(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (B, T) ids and (B, T) mask, padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ShapeError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = integer_ids(torch.as_tensor(list(p)), f"input_ids[{b}]")
        mask[b, width - len(p):] = 1
    return ids, mask


def integer_ids(ids: torch.Tensor, path: str = "input_ids") -> torch.Tensor:
    """``ids`` as torch.long; ConfigError for float, complex or bool ids, which a cast would silently truncate."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ConfigError(path, f"expected integer token ids, got dtype {ids.dtype} (a cast would truncate them)")
    return ids.long()


def normalize_inputs(input_ids: Any, attn_mask: Any, pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                           list[list[int]]]:
    """Accept (B, T) / (T,) tensors or lists of id lists; return ids (B, T), mask (B, T) or None, and the
    unpadded prompts. A mask must be left padding (zeros only before the first real token)."""
    if isinstance(input_ids, (str, bytes)) or (isinstance(input_ids, (list, tuple)) and input_ids
                                               and isinstance(input_ids[0], (str, bytes))):
        raise ConfigError("input_ids", "got text; expected token ids (a (B, T) tensor or lists of ints): encode "
                                       "the text with the tokenizer first, e.g. [tok.encode(text)]")
    if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple)):
        if attn_mask is not None:
            raise ConfigError("attn_mask", "is built from the lists when input_ids is a list of lists; pass neither")
        ids, mask = left_pad(input_ids, pad_id)
        return ids, (mask if not bool(mask.all()) else None), [list(p) for p in input_ids]
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ShapeError(f"input_ids: expected (B, T) with T >= 1, got shape {tuple(ids.shape)}")
    ids = integer_ids(ids)
    if attn_mask is None:
        return ids, None, ids.tolist()
    mask = torch.as_tensor(attn_mask, dtype=torch.long, device=ids.device)
    if mask.dim() == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ShapeError(f"attn_mask: shape {tuple(mask.shape)} must equal input_ids' {tuple(ids.shape)}")
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
        raise ConfigError("attn_mask", "must be left padding: zeros before the first real token, ones after, "
                                       "and the last column all ones")
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return ids, (mask if not bool(mask.all()) else None), prompts


class BatchDecoder:
    """Prefill then step a batch of prompts through ``model`` with a static cache.

    ``logits`` always holds the raw next-token logits (B, V) of the last forward. ``feed(tokens_B)`` appends one
    token per row and computes the next logits.
    """

    def __init__(self, model: Any, ids_BT: torch.Tensor, mask_BT: torch.Tensor | None, max_new_tokens: int,
                 *, cache_kind: str = "static"):
        self.model = model
        self.device = model_device(model)
        max_len = int(model.config.max_seq_len)
        B, T = ids_BT.shape
        if max_len <= T:
            raise ConfigError("input_ids", f"prompt has {T} tokens; the model's max_seq_len is {max_len}, so no room "
                                           "is left to generate")
        self.capacity = min(T + max_new_tokens, max_len)
        self.cache = model.new_cache(B, max_seq_len=self.capacity, kind=cache_kind)
        self.ids_BT = ids_BT.to(self.device)
        self.mask_BT = mask_BT.to(self.device) if mask_BT is not None else None
        self.prompt_logits_BTV: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # (B, V) raw next-token logits
        self.seq_len = 0  # tokens cached per row (padding included)

    @property
    def room(self) -> int:
        """Tokens that can still be fed before the cache is full."""
        return self.capacity - self.seq_len

    @torch.inference_mode()
    def prefill(self, keep_prompt_logits: bool = False) -> torch.Tensor:
        if keep_prompt_logits:
            self.prompt_logits_BTV = self.model(self.ids_BT, cache=self.cache, attn_mask=self.mask_BT)
            self.logits = self.prompt_logits_BTV[:, -1].float()
        else:  # the LM head on the last position alone where the model can
            self.logits = last_logits(self.model, self.ids_BT, cache=self.cache, attn_mask=self.mask_BT)
        self.seq_len = self.ids_BT.shape[1]
        return self.logits

    @torch.inference_mode()
    def feed(self, tokens_B: torch.Tensor) -> torch.Tensor:
        if self.mask_BT is not None:
            self.mask_BT = torch.cat([self.mask_BT, self.mask_BT.new_ones(self.mask_BT.shape[0], 1)], dim=1)
        logits = self.model(tokens_B.to(self.device)[:, None], cache=self.cache, attn_mask=self.mask_BT)
        self.seq_len += 1
        self.logits = logits[:, -1].float()
        return self.logits

    def cache_occupancy(self) -> float:
        """Share of the cache's token slots in use."""
        return self.seq_len / self.capacity


class TokenPicker:
    """Penalties, structured-output masks and sampling for a fixed batch, keeping per-row token counts and grammar
    matchers up to date. ``grammars`` (a :class:`serve.structured.GrammarBackend`) is needed when a row's params
    are ``structured``."""

    def __init__(self, params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]], vocab_size: int,
                 device: torch.device, generator: torch.Generator | Sequence[torch.Generator | None] | None,
                 grammars: Any = None):
        self.params = list(params)
        self.generator = generator
        self.vocab_size = vocab_size
        self.penalised = any(p.needs_penalties for p in self.params)
        if self.penalised:
            self.prompt_counts = token_counts(prompts, vocab_size, device)
            self.output_counts = torch.zeros_like(self.prompt_counts)
        self.grammars = grammars
        self.matchers = [grammars.matcher(p.structured) if grammars is not None and p.structured is not None else None
                         for p in self.params]

    def pick(self, logits_BV: torch.Tensor) -> torch.Tensor:
        masks = self.grammars.fill(self.matchers) if self.grammars is not None else None
        if self.penalised:
            logits_BV = apply_penalties(logits_BV, self.params, self.prompt_counts + self.output_counts,
                                        self.output_counts)
        if masks is not None:
            logits_BV = self.grammars.apply(logits_BV, masks)
        return sample(logits_BV, self.params, self.generator)

    def record(self, tokens_B: torch.Tensor, live_B: torch.Tensor) -> None:
        if self.penalised:
            self.output_counts.scatter_add_(1, tokens_B[:, None].to(self.output_counts.device),
                                            live_B[:, None].to(self.output_counts))
        if any(m is not None for m in self.matchers):
            from serve.structured import check_accepted

            picked = tokens_B.tolist()
            for b in live_B.nonzero().flatten().tolist():
                if self.matchers[b] is not None:
                    check_accepted(self.matchers[b], picked[b], f"row {b}")

    def complete(self, b: int) -> bool:
        """Whether row ``b``'s structured output is complete (its grammar has ended)."""
        return self.matchers[b] is not None and self.matchers[b].is_terminated()
