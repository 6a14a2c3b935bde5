"""Per-request sampling parameters and the batched logits processors that apply them.

Rows of one batch may carry different parameters (the continuous-batching engine mixes requests), so every
processor works on a (B, V) logits tensor with per-row parameter tensors. Order follows vLLM and Hugging Face:
penalties on raw logits, then temperature, then top-k, top-p (nucleus, Holtzman et al. 2020) and min-p
(Nguyen et al. 2024) truncation, then sampling. ``temperature == 0`` means greedy (argmax after penalties).

Penalties: ``repetition_penalty`` is CTRL's (Keskar et al. 2019, Hugging Face semantics: positive logits of
every token seen in the prompt or output are divided by it, negative ones multiplied); ``presence_penalty`` and
``frequency_penalty`` are OpenAI's (subtracted once / per occurrence for tokens already generated).

Legend: B batch rows, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from specs.schema import ConfigBase

NonNegFloat = Annotated[float, Field(ge=0)]


@dataclass(frozen=True, kw_only=True)
class StructuredOutput(ConfigBase):
    """Constrained decoding: the output must match exactly one of a JSON Schema (``json``, as JSON text; OpenAI's
    ``response_format``), a regular expression, one of ``choice``'s strings, or an EBNF grammar (GBNF, as
    llama.cpp writes it), as vLLM's ``structured_outputs`` names them. ``whitespace``: JSON may hold any
    whitespace between its tokens (False: one space after ``:`` and ``,`` and none elsewhere)."""

    kind: ClassVar[str] = "StructuredOutput"
    json: str | None = None
    regex: str | None = None
    choice: tuple[str, ...] = ()
    grammar: str | None = None
    whitespace: bool = True

    def check(self) -> None:
        given = [n for n in ("json", "regex", "choice", "grammar") if getattr(self, n)]
        if len(given) != 1:
            self.fail("json", f"exactly one of json, regex, choice, grammar is needed; got {given or 'none'}")


@dataclass(frozen=True, kw_only=True)
class SamplingParams(ConfigBase):
    """How one request picks its tokens and when it stops. Ranges follow the OpenAI API."""

    kind: ClassVar[str] = "SamplingParams"
    max_new_tokens: Annotated[int, Field(ge=0)] = 64
    temperature: Annotated[float, Field(ge=0, le=100)] = 0.0  # 0: greedy
    top_k: Annotated[int, Field(ge=0)] = 0  # 0: off
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None  # what torch.Generator.manual_seed takes
    stop: tuple[str, ...] = ()  # stop strings: excluded from the returned text
    stop_token_ids: tuple[int, ...] = ()  # stop tokens besides EOS: kept in the tokens, removed from the text
    ignore_eos: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # None: off; k: chosen token + top-k alternatives
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    structured: StructuredOutput | None = None  # constrained decoding (serve.structured; the engine's requests)

    def check(self) -> None:
        if any(not s for s in self.stop):
            self.fail("stop", "stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator seeded with ``seed`` on ``device`` (None when unseeded: the global RNG is used)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def token_counts(ids: Sequence[Sequence[int]] | torch.Tensor, vocab_size: int, device: torch.device | str = "cpu",
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) int32 occurrence counts of each row's ids (``mask`` (B, T) drops padding)."""
    if not isinstance(ids, torch.Tensor):
        width = max((len(r) for r in ids), default=0)
        t = torch.zeros(len(ids), width, dtype=torch.long)
        m = torch.zeros(len(ids), width, dtype=torch.bool)
        for i, r in enumerate(ids):
            t[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            m[i, : len(r)] = True
        ids, mask = t, m
    ids = ids.to(device)
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.int32, device=device)
    ones = torch.ones_like(ids, dtype=torch.int32) if mask is None else mask.to(device=device, dtype=torch.int32)
    return counts.scatter_add_(1, ids.clamp(0, vocab_size - 1), ones)


def _column(params: Sequence[SamplingParams], name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)[:, None]  # (B, 1)


def apply_penalties(logits_BV: torch.Tensor, params: Sequence[SamplingParams], seen_BV: torch.Tensor | None,
                    output_counts_BV: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty over ``seen_BV`` (prompt + output counts) and OpenAI penalties over output counts."""
    if not any(p.needs_penalties for p in params):
        return logits_BV
    dev = logits_BV.device
    logits_BV = logits_BV.clone()
    if seen_BV is not None and any(p.repetition_penalty != 1.0 for p in params):
        rep = _column(params, "repetition_penalty", logits_BV.dtype, dev)
        penalised = torch.where(logits_BV > 0, logits_BV / rep, logits_BV * rep)
        logits_BV = torch.where(seen_BV > 0, penalised, logits_BV)
    if output_counts_BV is not None:
        freq = _column(params, "frequency_penalty", logits_BV.dtype, dev)
        pres = _column(params, "presence_penalty", logits_BV.dtype, dev)
        counts = output_counts_BV.to(logits_BV.dtype)
        logits_BV = logits_BV - freq * counts - pres * (counts > 0).to(logits_BV.dtype)
    return logits_BV


def apply_truncation(logits_BV: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p: rows' removed tokens get -inf. Greedy rows are left alone."""
    dev = logits_BV.device
    temp = _column(params, "temperature", torch.float32, dev)
    logits_BV = logits_BV.float() / torch.where(temp > 0, temp, torch.ones_like(temp))
    vocab = logits_BV.shape[-1]
    neg_inf = torch.finfo(logits_BV.dtype).min
    if any(0 < p.top_k < vocab for p in params):
        k = _column(params, "top_k", torch.long, dev).clamp(max=vocab)
        k = torch.where(k > 0, k, torch.full_like(k, vocab))
        sorted_desc = logits_BV.sort(dim=-1, descending=True).values
        kth = sorted_desc.gather(-1, k - 1)  # (B, 1) the k-th largest logit
        logits_BV = logits_BV.masked_fill(logits_BV < kth, neg_inf)
    if any(p.top_p < 1.0 for p in params):
        # Hugging Face TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p, keep >= 1 token.
        top_p = _column(params, "top_p", logits_BV.dtype, dev)
        sorted_logits, order = logits_BV.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - top_p)
        drop_sorted[:, -1] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, neg_inf)
    if any(p.min_p > 0 for p in params):
        min_p = _column(params, "min_p", logits_BV.dtype, dev)
        probs = logits_BV.softmax(dim=-1)
        threshold = min_p * probs.max(dim=-1, keepdim=True).values
        logits_BV = logits_BV.masked_fill(probs < threshold, neg_inf)
    return logits_BV


def sample(logits_BV: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None] | torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from (already penalised) logits: argmax for greedy rows, else sample the processed
    distribution. ``generators``: one shared generator, or one per row (seeded requests). Returns (B,) int64."""
    greedy = torch.tensor([p.greedy for p in params], device=logits_BV.device)
    tokens = logits_BV.argmax(dim=-1)
    if bool(greedy.all()):
        return tokens
    probs = apply_truncation(logits_BV, params).softmax(dim=-1)
    if generators is None or isinstance(generators, torch.Generator):
        drawn = torch.multinomial(probs, 1, generator=generators).squeeze(-1)
    else:
        drawn = torch.stack([torch.multinomial(probs[i], 1, generator=g).squeeze(-1) if not p.greedy else tokens[i]
                             for i, (p, g) in enumerate(zip(params, generators))])
    return torch.where(greedy, tokens, drawn)


def processed_probs(logits_BV: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """(B, V) the distribution ``sample`` draws from (one-hot at the argmax for greedy rows)."""
    probs = apply_truncation(logits_BV, params).softmax(dim=-1)
    greedy = torch.tensor([p.greedy for p in params], device=logits_BV.device)[:, None]
    one_hot = torch.nn.functional.one_hot(logits_BV.argmax(-1), logits_BV.shape[-1]).to(probs.dtype)
    return torch.where(greedy, one_hot, probs)


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probability of a chosen token under the raw model distribution, with the top alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), best first


def token_logprobs(logits_BV: torch.Tensor, chosen_B: torch.Tensor, top_n: Sequence[int]) -> list[TokenLogprobs]:
    """Raw-model log-probabilities (vLLM's default ``raw_logprobs``) of ``chosen_B`` and each row's top-n."""
    logp = torch.log_softmax(logits_BV.float(), dim=-1)
    chosen = logp.gather(-1, chosen_B[:, None].long()).squeeze(-1).tolist()
    k = max(top_n, default=0)
    top_v, top_i = (logp.topk(k, dim=-1) if k else (None, None))
    out = []
    for b, lp in enumerate(chosen):
        n = top_n[b]
        top = tuple(zip(top_i[b, :n].tolist(), top_v[b, :n].tolist())) if n else ()
        out.append(TokenLogprobs(int(chosen_B[b]), lp, top))
    return out
