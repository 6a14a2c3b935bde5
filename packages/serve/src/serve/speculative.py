"""Speculative decoding with a draft model: exact for greedy and for sampling.

Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding" (arXiv:2211.17192), and Chen et
al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling" (arXiv:2302.01318). The draft
proposes ``k`` tokens d_i ~ q_i; the target scores all of them in one forward, giving p_1 .. p_{k+1}. Token d_i is
accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is drawn from
norm(max(0, p_i - q_i)), and when all k are accepted a bonus token is drawn from p_{k+1}. The output distribution is
exactly the target's. p and q are the *processed* distributions (temperature, top-k/p, min-p, penalties) and, for
greedy decoding, one-hot at the argmax, so acceptance is "draft equals target argmax" and the output equals plain
greedy decoding token for token. Rejected tokens leave both caches through :func:`serve.cache_ops.truncate`.
A draft with a shorter ``max_seq_len`` than the target drafts while it has room; the target then decodes alone, so
the output (and where "length" ends it) stays the target's.

One sequence at a time (B = 1), as in gpt-fast. Legend: K draft tokens, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from serve.cache_ops import truncate
from serve.decoder import model_device
from serve.generate import GenerateOutput, collect
from serve.sampling import SamplingParams, apply_penalties, processed_probs, token_counts, token_logprobs
from serve.state import SequenceState
from specs.errors import ConfigError


def accept_draft(p_KV: torch.Tensor, q_KV: torch.Tensor, draft_K: torch.Tensor, p_bonus_V: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """The rejection step. p_KV, q_KV: target and draft probabilities at the K draft positions; draft_K: the
    drafted tokens; p_bonus_V: the target's distribution after all K. Returns (accepted count n, next token): the
    first n drafts are kept and ``next token`` follows them."""
    K = draft_K.shape[0]
    idx = torch.arange(K, device=p_KV.device)
    p_d = p_KV[idx, draft_K]
    q_d = q_KV[idx, draft_K]
    u = torch.rand(K, generator=generator, device=p_KV.device)
    # accept iff u < p/q (q(d) > 0 because d was drawn from q); compare as u*q < p to avoid dividing.
    rejected = (u * q_d >= p_d).nonzero()
    if len(rejected) == 0:
        return K, int(torch.multinomial(p_bonus_V, 1, generator=generator))
    n = int(rejected[0])
    residual = (p_KV[n] - q_KV[n]).clamp(min=0)
    total = residual.sum()
    # total == 0 only if p == q at n, when rejection has probability 0; fall back to p for numerical safety.
    dist = residual / total if float(total) > 0 else p_KV[n]
    return n, int(torch.multinomial(dist, 1, generator=generator))


def _probs(logits_V: torch.Tensor, sp: SamplingParams, history: Sequence[int], prompt_counts: torch.Tensor | None
           ) -> torch.Tensor:
    """Processed distribution (V,) after ``history`` (the tokens generated so far) for the penalties."""
    logits = logits_V[None].float()
    if sp.needs_penalties:
        out = token_counts([list(history)], logits.shape[-1], logits.device)
        logits = apply_penalties(logits, [sp], prompt_counts + out, out)
    return processed_probs(logits, [sp])[0]


@torch.inference_mode()
def speculative_generate(target: Any, draft: Any, ids_BT: torch.Tensor, mask_BT: torch.Tensor | None,
                         sp: SamplingParams, *, num_draft_tokens: int = 4, eos_ids: Sequence[int] = (),
                         pad_id: int = 0, tokenizer: Any = None, generator: torch.Generator | None = None
                         ) -> GenerateOutput:
    """Generate for one prompt with ``draft`` proposing ``num_draft_tokens`` tokens per target forward."""
    if ids_BT.shape[0] != 1 or mask_BT is not None:
        raise ConfigError("draft_model", f"speculative decoding takes one unpadded prompt, got {ids_BT.shape[0]} rows")
    if num_draft_tokens < 1:
        raise ConfigError("num_draft_tokens", f"must be >= 1, got {num_draft_tokens}")
    if int(draft.config.vocab_size) != int(target.config.vocab_size):
        raise ConfigError("draft_model", f"vocab_size {draft.config.vocab_size} differs from the target's "
                                         f"{target.config.vocab_size}; draft and target must share a tokenizer")
    if sp.prompt_logprobs is not None:
        raise ConfigError("prompt_logprobs", "not available with a draft model; score the prompt with generate()")
    prompt = ids_BT[0].tolist()
    T = len(prompt)
    max_len = int(target.config.max_seq_len)
    if max_len <= T:
        raise ConfigError("input_ids", f"prompt has {T} tokens; the target's max_seq_len is {max_len}, so no room "
                                       "is left to generate")
    wanted = T + sp.max_new_tokens + num_draft_tokens + 1
    capacity = min(wanted, max_len)  # the target's cache; generation ends with "length" once it cannot feed more
    d_capacity = min(wanted, int(draft.config.max_seq_len))
    tdev, ddev = model_device(target), model_device(draft)
    t_cache = target.new_cache(1, max_seq_len=capacity)
    d_cache = draft.new_cache(1, max_seq_len=d_capacity) if d_capacity > T else None
    state = SequenceState(prompt, sp, tokenizer=tokenizer, eos_ids=eos_ids)
    prompt_counts = token_counts([prompt], int(target.config.vocab_size), tdev) if sp.needs_penalties else None
    seq = list(prompt)
    t_len = d_len = 0  # tokens in each cache
    stats = {"target_forwards": 0, "drafted": 0, "accepted": 0}

    def feed(model: Any, cache: Any, tokens: Sequence[int], dev: torch.device) -> torch.Tensor:
        return model(torch.tensor([list(tokens)], dtype=torch.long, device=dev), cache=cache)[0].float()  # (n, V)

    # Prefill the target on the prompt; its last logits give the first token (exactly as plain decoding).
    t_logits = feed(target, t_cache, seq, tdev)
    t_len = len(seq)
    stats["target_forwards"] += 1
    p = _probs(t_logits[-1], sp, state.output_ids, prompt_counts)
    first = int(p.argmax()) if sp.greedy else int(torch.multinomial(p, 1, generator=generator))
    _push(state, first, t_logits[-1], sp)
    seq.append(first)
    while not state.finished:
        # The target reads len(seq) + k tokens to verify k drafts; the draft holds len(seq) + k - 1 after drafting.
        room = min(capacity - len(seq), d_capacity - len(seq) + 1 if d_cache is not None else 0)
        k = min(num_draft_tokens, sp.max_new_tokens - len(state.output_ids), room)
        if k < 1:
            # No room to speculate (the draft is full, or the target nearly): one plain target step.
            t_logits = feed(target, t_cache, seq[t_len:], tdev)
            t_len = len(seq)
            stats["target_forwards"] += 1
            p = _probs(t_logits[-1], sp, state.output_ids, prompt_counts)
            nxt = int(p.argmax()) if sp.greedy else int(torch.multinomial(p, 1, generator=generator))
            _push(state, nxt, t_logits[-1], sp)
            seq.append(nxt)
            if not state.finished and len(seq) > capacity:
                state.finish_length()
            continue
        # Draft k tokens autoregressively (feeding whatever the draft cache has not seen yet).
        drafts: list[int] = []
        q_rows = []
        pending = seq[d_len:]
        for _ in range(k):
            d_logits = feed(draft, d_cache, pending, ddev)
            d_len += len(pending)
            q = _probs(d_logits[-1].to(tdev), sp, state.output_ids + drafts, prompt_counts)
            d = int(q.argmax()) if sp.greedy else int(torch.multinomial(q, 1, generator=generator))
            drafts.append(d)
            q_rows.append(q)
            pending = [d]
        # Score every draft with one target forward over [unseen tokens..., d_1 .. d_k].
        t_logits = feed(target, t_cache, seq[t_len:] + drafts, tdev)
        stats["target_forwards"] += 1
        t_logits = t_logits[-(k + 1):]  # logits predicting d_1 .. d_k and the bonus token
        p_rows = [_probs(t_logits[i], sp, state.output_ids + drafts[:i], prompt_counts) for i in range(k + 1)]
        if sp.greedy:
            n = 0
            while n < k and drafts[n] == int(p_rows[n].argmax()):
                n += 1
            nxt = int(p_rows[n].argmax())
        else:
            n, nxt = accept_draft(torch.stack(p_rows[:k]), torch.stack(q_rows), torch.tensor(drafts, device=tdev),
                                  p_rows[k], generator)
        stats["drafted"] += k
        stats["accepted"] += n
        new_tokens = [*drafts[:n], nxt]
        for i, tok in enumerate(new_tokens):
            _push(state, tok, t_logits[i], sp)
            seq.append(tok)
            if state.finished:
                break
        if not state.finished and len(seq) > capacity:
            state.finish_length()
        # Keep only verified tokens in the caches: the target holds seq minus the newest token.
        t_len = len(seq) - 1
        truncate(t_cache, t_len)
        d_len = min(d_len, len(seq) - 1)
        truncate(d_cache, d_len)
    out = collect(ids_BT, [state], pad_id, tokenizer, None, want_logprobs=sp.logprobs is not None)
    return dataclasses.replace(out, stats=stats)


def _push(state: SequenceState, token: int, logits_V: torch.Tensor, sp: SamplingParams) -> None:
    lp = None
    if sp.logprobs is not None:
        lp = token_logprobs(logits_V[None], torch.tensor([token], device=logits_V.device), [sp.logprobs])[0]
    state.push(token, lp)
