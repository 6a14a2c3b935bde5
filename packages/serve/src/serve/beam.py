"""Beam search (num_beams, length_penalty, early_stopping) with Hugging Face ``generate``'s exact semantics.

A port of transformers' vectorised beam search (``GenerationMixin._beam_search`` since v4.50): per batch item keep
``num_beams`` running hypotheses scored by summed log-probabilities; each step takes the top
``max(2, 1 + n_eos) * num_beams`` continuations over all beams, moves those that end (EOS or max length) among the
top ``num_beams`` into the finished set scored ``sum_logprobs / generated_len ** length_penalty``, and continues the
best unfinished ones. ``early_stopping``: True stops once ``num_beams`` hypotheses finished; False stops when the
best running beam, scored at the current length, cannot beat the worst finished one; "never" scores it at the
maximum length when ``length_penalty > 0``. The KV cache follows its beams through
:func:`serve.cache_ops.reorder_rows`.

Legend: B batch items, NB beams, K candidates kept per step, V vocabulary, L max total length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from serve.cache_ops import reorder_rows
from serve.decoder import BatchDecoder
from serve.generate import GenerateOutput
from serve.sampling import SamplingParams
from specs.errors import ConfigError

_NEG = -1.0e9


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, N, ...) gathered along dim 1 by idx (B, M)."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


@torch.inference_mode()
def beam_search(model: Any, ids_BT: torch.Tensor, mask_BT: torch.Tensor | None, sp: SamplingParams, *,
                num_beams: int, length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_ids: Sequence[int] = (), pad_id: int = 0, tokenizer: Any = None) -> GenerateOutput:
    """Best beam per batch item; ``scores`` are the length-penalised log-probabilities of the returned beams."""
    if not sp.greedy or sp.needs_penalties or sp.stop or sp.logprobs is not None or sp.prompt_logprobs is not None:
        raise ConfigError("num_beams", "beam search here is deterministic: it takes no temperature, penalties, "
                                       "stop strings or logprobs")
    if early_stopping not in (True, False, "never"):
        raise ConfigError("early_stopping", f"expected True, False or 'never', got {early_stopping!r}")
    B, T = ids_BT.shape
    NB = num_beams
    eos = torch.tensor(sorted({*eos_ids, *sp.stop_token_ids}), dtype=torch.long)
    max_length = min(T + sp.max_new_tokens, int(model.config.max_seq_len))
    if max_length <= T:
        return GenerateOutput(sequences=ids_BT, tokens=[[] for _ in range(B)], finish_reasons=["length"] * B)
    flat_ids = ids_BT.repeat_interleave(NB, dim=0)  # (B*NB, T)
    flat_mask = mask_BT.repeat_interleave(NB, dim=0) if mask_BT is not None else None
    dec = BatchDecoder(model, flat_ids, flat_mask, max_length - T)
    logits = dec.prefill()
    dev = logits.device
    eos = eos.to(dev)

    K = max(2, 1 + len(eos)) * NB
    top_nb_mask = torch.arange(K, device=dev) < NB
    fill = pad_id
    running = torch.full((B, NB, max_length), fill, dtype=torch.long, device=dev)
    running[:, :, :T] = ids_BT.to(dev)[:, None]
    finished_seqs = running.clone()
    running_scores = torch.zeros(B, NB, device=dev)
    running_scores[:, 1:] = _NEG  # only the first beam's tokens count at the first step
    finished_scores = torch.full((B, NB), _NEG, device=dev)
    finished_lens = torch.zeros(B, NB, dtype=torch.long, device=dev)
    is_finished = torch.zeros(B, NB, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)  # HF's is_early_stop_heuristic_unsatisfied
    offset = (torch.arange(B, device=dev) * NB)[:, None]
    cur_len = T
    while True:
        V = logits.shape[-1]
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(B, NB, V) + running_scores[:, :, None]
        top_lp, top_idx = torch.topk(log_probs.view(B, NB * V), k=K)  # (B, K)
        parent = top_idx // V
        token = top_idx % V
        cand = _gather(running, parent)  # (B, K, L)
        cand[:, :, cur_len] = token
        hits = torch.isin(token, eos) | (cur_len + 1 >= max_length)  # (B, K)

        # Continue the best unfinished candidates.
        cont_lp = top_lp + hits.float() * _NEG
        nxt = torch.topk(cont_lp, k=NB).indices  # (B, NB)
        running = _gather(cand, nxt)
        running_scores = _gather(cont_lp, nxt)
        parent_flat = _gather(parent + offset, nxt).reshape(-1)

        # Move candidates that just ended (among the top NB) into the finished set when they beat it.
        just_done = hits & top_nb_mask[None, :]
        done_lp = top_lp / ((cur_len + 1 - T) ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        done_lp = done_lp + full.float() * _NEG + (~improvable).float() * _NEG + (~just_done).float() * _NEG
        merged_scores = torch.cat([finished_scores, done_lp], dim=1)
        keep = torch.topk(merged_scores, k=NB).indices
        finished_seqs = _gather(torch.cat([finished_seqs, cand], dim=1), keep)
        finished_scores = _gather(merged_scores, keep)
        finished_lens = _gather(torch.cat([finished_lens, torch.full_like(top_lp, cur_len + 1 - T,
                                                                          dtype=torch.long)], dim=1), keep)
        is_finished = _gather(torch.cat([is_finished, just_done], dim=1), keep)

        cur_len += 1
        if early_stopping == "never" and length_penalty > 0:
            best_len = max_length - T
        else:
            best_len = cur_len - T
        best_running = running_scores[:, :1] / (best_len ** length_penalty)
        worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values,
                                 torch.full_like(finished_scores, _NEG))
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        go_on = bool(improvable.any()) and not (bool(is_finished.all()) and early_stopping is True) \
            and not bool(hits.all())
        if not go_on or cur_len >= max_length:
            break
        reorder_rows(dec.cache, parent_flat)
        if dec.mask_BT is not None:
            dec.mask_BT = dec.mask_BT.index_select(0, parent_flat)
        logits = dec.feed(running[:, :, cur_len - 1].reshape(-1))

    best = finished_seqs[:, 0]  # (B, L)
    lens = finished_lens[:, 0].tolist()
    out_len = T + max(lens)
    tokens = [best[b, T:T + n].tolist() for b, n in enumerate(lens)]
    reasons = ["stop" if t and t[-1] in set(eos.tolist()) else "length" for t in tokens]
    texts = [tokenizer.decode(t) for t in tokens] if tokenizer is not None else None
    return GenerateOutput(sequences=best[:, :out_len].to(ids_BT.device), tokens=tokens, finish_reasons=reasons,
                          texts=texts, scores=finished_scores[:, 0].tolist())
