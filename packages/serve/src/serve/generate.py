"""``generate``: decoding for any specs LanguageModel (greedy, sampling, beam search, speculative), streaming, and
an instrumented variant that logs latency and throughput.

    from serve.generate import generate
    out = generate(model, input_ids, max_new_tokens=64)                      # greedy, (B, T + N) like HF
    out = generate(model, ids, temperature=0.8, top_p=0.95, seed=0)          # sampling (SamplingParams fields)
    out = generate(model, ids, num_beams=4, length_penalty=1.0)              # beam search (serve.beam)
    out = generate(model, ids, draft_model=small, num_draft_tokens=4)        # speculative (serve.speculative)
    res = generate(model, ids, tokenizer=tok, stop=["\\n"], logprobs=2, prompt_logprobs=0, return_dict=True)
    res = generate(model, ids, tokenizer=tok, structured={"json": SCHEMA_TEXT}, return_dict=True)  # constrained
    for token_id, text in generate_stream(model, ids, tokenizer=tok): ...   # a specs TokenStream

Sampling keywords are the fields of :class:`serve.sampling.SamplingParams`; an unknown keyword fails with the list
of valid ones. Rows of a batch are left padded (pass ``attn_mask``, or a list of id lists). Finished rows are
padded with ``pad_token_id`` in ``sequences``. Logprobs are the raw model's (vLLM's default).

Prompt, EOS, pad and stop token ids must be integers in the model's vocabulary [0, vocab_size), and a prompt must
leave room for one new token (at most max_seq_len - 1 tokens); both are checked once per call (ConfigError). When
prompt + max_new_tokens runs past max_seq_len, rows stop early with finish reason "length" (as transformers does)
and a warning on this module's logger says how many new tokens fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serve.decoder import BatchDecoder, TokenPicker, model_device, normalize_inputs
from serve.sampling import SamplingParams, TokenLogprobs, make_generator, token_logprobs
from serve.state import SequenceState
from specs.errors import ConfigError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GenerateOutput:
    """Everything ``generate(..., return_dict=True)`` knows. Lists are per batch row."""

    sequences: torch.Tensor  # (B, T + N) the (padded) prompts followed by generated tokens, pad after finishing
    tokens: list[list[int]]  # generated ids (EOS / stop token included when one ended the row)
    finish_reasons: list[str]  # "stop" | "length"
    texts: list[str] | None = None  # decoded, stop strings cut (with a tokenizer)
    logprobs: list[list[TokenLogprobs]] | None = None
    prompt_logprobs: list[list[TokenLogprobs | None]] | None = None  # first prompt token has none
    scores: list[float] | None = None  # beam search: length-penalised sequence scores
    stats: dict[str, int] | None = None  # speculative decoding: target forwards, drafted and accepted tokens


def build_params(max_new_tokens: int, sampling: dict[str, Any], params: SamplingParams | None) -> SamplingParams:
    """SamplingParams from keywords; unknown keywords raise ConfigError listing the valid ones."""
    if params is not None:
        if sampling:
            raise ConfigError(next(iter(sampling)), "pass sampling options either as params= or as keywords, not both")
        return params
    return SamplingParams.from_dict({"max_new_tokens": max_new_tokens, **sampling})


def resolve_eos(eos_token_id: int | Sequence[int] | None, tokenizer: Any) -> tuple[int, ...]:
    if eos_token_id is None:
        eos = getattr(tokenizer, "eos_id", None)
        return () if eos is None else (int(eos),)
    return (int(eos_token_id),) if isinstance(eos_token_id, int) else tuple(int(e) for e in eos_token_id)


def eos_path(eos_token_id: int | Sequence[int] | None) -> str:
    """Where the EOS ids came from, for error messages."""
    return "eos_token_id" if eos_token_id is not None else "tokenizer.eos_id"


def check_special_ids(model: Any, ids: dict[str, Sequence[int]]) -> None:
    """ConfigError naming the field when an EOS / pad / stop token id is outside the model's vocabulary."""
    V = int(model.config.vocab_size)
    for path, values in ids.items():
        bad = next((t for t in values if not 0 <= t < V), None)
        if bad is not None:
            raise ConfigError(path, f"token id {bad} is outside the vocabulary [0, {V}) (the model's vocab_size); "
                                    "expected an id the model can read and produce")


def check_prompt(model: Any, ids_BT: torch.Tensor, max_new_tokens: int, *, beams: bool = False) -> None:
    """ConfigError for prompt ids outside the vocabulary (one min/max over the (B, T) prompt) or a prompt that
    leaves no room to generate; a warning when prompt + max_new_tokens runs past the model's max_seq_len."""
    V, max_len = int(model.config.vocab_size), int(model.config.max_seq_len)
    lo, hi = torch.stack(torch.aminmax(ids_BT)).tolist()
    if lo < 0 or hi >= V:
        raise ConfigError("input_ids", f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {V}) (the "
                                       "model's vocab_size)")
    n = ids_BT.shape[1]  # prompt width, left padding included
    if n > max_len:
        raise ConfigError("input_ids", f"prompt has {n} tokens, more than the model's max_seq_len of {max_len}; "
                                       f"expected at most {max_len - 1} prompt tokens")
    if n == max_len and max_new_tokens > 0:
        raise ConfigError("input_ids", f"prompt has {n} tokens; the model's max_seq_len is {max_len}, so no room "
                                       f"is left to generate; expected at most {max_len - 1} prompt tokens")
    fit = max_len - n + (0 if beams else 1)  # the last token is sampled, never fed; beam search keeps T + N <= L
    if max_new_tokens > fit:
        log.warning("prompt has %d tokens and max_new_tokens is %d, but the model's max_seq_len is %d: at most %d "
                    "new tokens fit; rows that reach it finish with reason 'length'", n, max_new_tokens, max_len, fit)


def prompt_token_logprobs(logits_TV: torch.Tensor, prompt: Sequence[int], top_n: int) -> list[TokenLogprobs | None]:
    """Logprob of each prompt token given those before it (None for the first), from prefill logits (T, V)."""
    if len(prompt) < 2:
        return [None] * len(prompt)
    target = torch.as_tensor(list(prompt[1:]), dtype=torch.long, device=logits_TV.device)
    lps = token_logprobs(logits_TV[: len(prompt) - 1], target, [top_n] * (len(prompt) - 1))
    return [None, *lps]


def generate(model: Any, input_ids: Any, max_new_tokens: int = 64, *, attn_mask: Any = None, tokenizer: Any = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None, params: SamplingParams | None = None, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: bool | str = False, draft_model: Any = None,
             num_draft_tokens: int = 4, return_dict: bool = False, **sampling: Any) -> torch.Tensor | GenerateOutput:
    """Generate up to ``max_new_tokens`` tokens after each prompt; see the module docstring.

    Returns the (B, T + N) sequences tensor, or a :class:`GenerateOutput` with ``return_dict=True``.
    """
    if num_beams < 1:
        raise ConfigError("num_beams", f"must be >= 1 (1 decodes without beam search), got {num_beams}")
    sp = build_params(max_new_tokens, sampling, params)
    eos = resolve_eos(eos_token_id, tokenizer)
    special = {eos_path(eos_token_id): eos, "stop_token_ids": sp.stop_token_ids}
    if pad_token_id is not None:
        pad = int(pad_token_id)
        special["pad_token_id"] = (pad,)
    elif getattr(tokenizer, "pad_id", None) is not None:
        pad = int(tokenizer.pad_id)
        special["tokenizer.pad_id"] = (pad,)
    else:
        pad = eos[0] if eos else 0
    check_special_ids(model, special)  # before the prompt: the pad fills its left padding
    ids_BT, mask_BT, prompts = normalize_inputs(input_ids, attn_mask, pad)
    check_prompt(model, ids_BT, sp.max_new_tokens, beams=num_beams > 1)
    if generator is None:
        generator = make_generator(sp.seed, model_device(model))
    if sp.structured is not None and (num_beams > 1 or draft_model is not None):
        raise ConfigError("structured", "structured outputs decode one token at a time: not with beam search or "
                                        "speculative decoding")
    if num_beams > 1:
        if draft_model is not None:
            raise ConfigError("num_beams", "beam search and speculative decoding cannot be combined")
        from serve.beam import beam_search

        out = beam_search(model, ids_BT, mask_BT, sp, num_beams=num_beams, length_penalty=length_penalty,
                          early_stopping=early_stopping, eos_ids=eos, pad_id=pad, tokenizer=tokenizer)
    elif draft_model is not None:
        from serve.speculative import speculative_generate

        out = speculative_generate(model, draft_model, ids_BT, mask_BT, sp, num_draft_tokens=num_draft_tokens,
                                   eos_ids=eos, pad_id=pad, tokenizer=tokenizer, generator=generator)
    else:
        out = _sample_batch(model, ids_BT, mask_BT, prompts, sp, eos, pad, tokenizer, generator)
    return out if return_dict else out.sequences


def _sample_batch(model: Any, ids_BT: torch.Tensor, mask_BT: torch.Tensor | None, prompts: list[list[int]],
                  sp: SamplingParams, eos: tuple[int, ...], pad: int, tokenizer: Any,
                  generator: torch.Generator | None) -> GenerateOutput:
    B = ids_BT.shape[0]
    states = [SequenceState(p, sp, tokenizer=tokenizer, eos_ids=eos) for p in prompts]
    prompt_lps = None
    if sp.max_new_tokens > 0 or sp.prompt_logprobs is not None:
        dec = BatchDecoder(model, ids_BT, mask_BT, sp.max_new_tokens)
        logits = dec.prefill(keep_prompt_logits=sp.prompt_logprobs is not None)
        if sp.prompt_logprobs is not None:
            T = ids_BT.shape[1]
            prompt_lps = [prompt_token_logprobs(dec.prompt_logits_BTV[b, T - len(p):], p, sp.prompt_logprobs)
                          for b, p in enumerate(prompts)]
        picker = TokenPicker([sp] * B, prompts, logits.shape[-1], logits.device, generator,
                             grammars=grammars(sp, tokenizer, logits.shape[-1], eos))
        live = torch.ones(B, dtype=torch.bool)
        for _ in range(sp.max_new_tokens):
            tokens = picker.pick(logits)
            lps = token_logprobs(logits, tokens, [sp.logprobs] * B) if sp.logprobs is not None else [None] * B
            rows = live.nonzero().flatten().tolist()
            for b in rows:
                states[b].push(int(tokens[b]), lps[b])
            picker.record(tokens, live)
            for b in rows:
                if picker.complete(b):
                    states[b].finish_stop()
            live = torch.tensor([not s.finished for s in states])
            if not live.any():
                break
            if dec.room == 0:
                for s in states:
                    s.finish_length()
                break
            logits = dec.feed(torch.where(live.to(tokens.device), tokens, torch.full_like(tokens, pad)))
    for s in states:
        if not s.finished:
            s.finish_length()
    return collect(ids_BT, states, pad, tokenizer, prompt_lps, want_logprobs=sp.logprobs is not None)


def grammars(sp: SamplingParams, tokenizer: Any, vocab_size: int, eos: Sequence[int]) -> Any:
    """The structured-output compiler ``sp.structured`` needs (None without it; ConfigError without a tokenizer)."""
    if sp.structured is None:
        return None
    if tokenizer is None or not callable(getattr(tokenizer, "id_to_token", None)):
        raise ConfigError("structured", "structured outputs need tokenizer= (its vocabulary builds the grammar)")
    from serve.structured import GrammarBackend

    return GrammarBackend(tokenizer, vocab_size, eos)


def collect(ids_BT: torch.Tensor, states: Sequence[SequenceState], pad: int, tokenizer: Any,
            prompt_lps: list | None, want_logprobs: bool, scores: list[float] | None = None) -> GenerateOutput:
    """Assemble a GenerateOutput from finished sequence states."""
    n = max((len(s.output_ids) for s in states), default=0)
    new = torch.full((len(states), n), pad, dtype=torch.long)
    for b, s in enumerate(states):
        new[b, : len(s.output_ids)] = torch.as_tensor(s.output_ids, dtype=torch.long)
    return GenerateOutput(
        sequences=torch.cat([ids_BT, new.to(ids_BT.device)], dim=1),  # on the caller's device, like HF
        tokens=[list(s.output_ids) for s in states],
        finish_reasons=[s.finish_reason or "length" for s in states],
        texts=[s.text for s in states] if tokenizer is not None else None,
        logprobs=[list(s.logprobs) for s in states] if want_logprobs else None,
        prompt_logprobs=prompt_lps,
        scores=scores,
    )


def generate_stream(model: Any, input_ids: Any, max_new_tokens: int = 64, *, tokenizer: Any = None,
                    eos_token_id: int | Sequence[int] | None = None, generator: torch.Generator | None = None,
                    params: SamplingParams | None = None, **sampling: Any) -> Iterator[tuple[int, str]]:
    """Yield (token id, text delta) for one prompt as tokens are produced (text '' without a tokenizer, and while a
    stop string or multi-byte character is still incomplete). A specs ``TokenStream``."""
    sp = build_params(max_new_tokens, sampling, params)
    stream = _stream(model, input_ids, sp, tokenizer, resolve_eos(eos_token_id, tokenizer), generator,
                     eos_path(eos_token_id))
    for token, delta, _ in stream:
        yield token, delta


def _stream(model: Any, input_ids: Any, sp: SamplingParams, tokenizer: Any, eos: tuple[int, ...],
            generator: torch.Generator | None, eos_field: str) -> Iterator[tuple[int, str, BatchDecoder]]:
    check_special_ids(model, {eos_field: eos, "stop_token_ids": sp.stop_token_ids})
    ids_BT, mask_BT, prompts = normalize_inputs(input_ids, None, 0)
    if ids_BT.shape[0] != 1:
        raise ConfigError("input_ids", f"streaming takes one prompt, got a batch of {ids_BT.shape[0]}")
    check_prompt(model, ids_BT, sp.max_new_tokens)
    generator = generator if generator is not None else make_generator(sp.seed, model_device(model))
    state = SequenceState(prompts[0], sp, tokenizer=tokenizer, eos_ids=eos)
    if sp.max_new_tokens == 0:
        return
    dec = BatchDecoder(model, ids_BT, mask_BT, sp.max_new_tokens)
    logits = dec.prefill()
    picker = TokenPicker([sp], prompts, logits.shape[-1], logits.device, generator,
                         grammars=grammars(sp, tokenizer, logits.shape[-1], eos))
    while True:
        token = picker.pick(logits)
        delta = state.push(int(token[0]))
        picker.record(token, torch.ones(1, dtype=torch.bool))
        if picker.complete(0):
            delta += state.finish_stop()
        if not state.finished and dec.room == 0:
            delta += state.finish_length()
        yield int(token[0]), delta, dec
        if state.finished:
            return
        logits = dec.feed(token)


def generate_instrumented(model: Any, input_ids: Any, *, viz: Any, max_new_tokens: int = 128, step: int = 0,
                          tokenizer: Any = None, eos_token_id: int | Sequence[int] | None = None,
                          prefix: str = "serve", **sampling: Any) -> torch.Tensor:
    """``generate`` for one prompt that logs its serving profile to ``viz`` (any object with ``log_scalars``, e.g.
    a viz VizSession or a specs MetricsLogger) at ``step``: time to first token, inter-token latency (mean, p50,
    p90, p99, max), decode and overall tokens/s, and KV-cache occupancy; the per-token latencies also go to
    ``log_text`` as JSON when the logger has it. Returns (1, T + N) token ids like ``generate``."""
    import json

    sp = build_params(max_new_tokens, sampling, None)
    ids_BT, _, prompts = normalize_inputs(input_ids, None, 0)
    tokens: list[int] = []
    stamps: list[float] = []
    occupancy = 0.0
    t0 = time.perf_counter()
    eos = resolve_eos(eos_token_id, tokenizer)
    for token, _, dec in _stream(model, ids_BT, sp, tokenizer, eos, None, eos_path(eos_token_id)):
        _sync(dec.device)
        stamps.append(time.perf_counter())
        tokens.append(token)
        occupancy = dec.cache_occupancy()
    gaps_ms = [(b - a) * 1e3 for a, b in zip([t0, *stamps[:-1]], stamps)]
    total_s = (stamps[-1] - t0) if stamps else 0.0
    metrics: dict[str, float] = {f"{prefix}/new_tokens": float(len(tokens)),
                                 f"{prefix}/prompt_tokens": float(len(prompts[0])),
                                 f"{prefix}/cache_occupancy": occupancy}
    if stamps:
        itl = sorted(gaps_ms[1:])
        metrics[f"{prefix}/ttft_ms"] = gaps_ms[0]
        metrics[f"{prefix}/prefill_tokens_per_s"] = len(prompts[0]) / max(gaps_ms[0] / 1e3, 1e-9)
        metrics[f"{prefix}/tokens_per_s"] = len(tokens) / max(total_s, 1e-9)
        if itl:
            metrics[f"{prefix}/itl_ms_mean"] = sum(itl) / len(itl)
            for q in (50, 90, 99):
                metrics[f"{prefix}/itl_ms_p{q}"] = percentile(itl, q)
            metrics[f"{prefix}/itl_ms_max"] = itl[-1]
            metrics[f"{prefix}/decode_tokens_per_s"] = len(itl) / max(sum(itl) / 1e3, 1e-9)
    viz.log_scalars(step, metrics)
    if hasattr(viz, "log_text"):
        viz.log_text(step, f"{prefix}/token_latency_ms", json.dumps([round(g, 4) for g in gaps_ms]))
    return torch.cat([ids_BT, torch.tensor([tokens], dtype=torch.long, device=ids_BT.device)], dim=1)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an ascending list."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
