"""Check an exported artifact against the PyTorch model it came from, and measure quantization's cost.

An artifact is reached through a *runner*: positional tensors in :class:`~export.decoder.DecoderSpec` input order
in, output tensors out (onnxruntime session, reloaded ExportedProgram, reloaded TorchScript module, TensorRT
engine). The reference is the model itself driven through its own cache (``model.new_cache``), so the check
covers the export wrapper and its cache as well as the exporter. Three checks, each on fresh random tokens:

- ``decode_parity``: a prefill then several cached decode steps, logits compared at every step;
- ``random_past_parity``: random past key/values of several shapes (incl. B=1, T=1, S=0) against the eager wrapper,
  logits and presents compared;
- ``greedy`` tokens and ``perplexity`` on a fixed token sequence (the quantization figures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from export.decoder import DecoderSpec, DecoderWithPast

Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


class ArtifactDecoder:
    """Drive a runner like a cached LM: feeds back presents as the next past (or re-runs the whole prefix)."""

    def __init__(self, runner: Runner, spec: DecoderSpec, batch: int):
        self.runner, self.spec, self.batch = runner, spec, batch
        self.past = spec.empty_past(batch) if spec.with_cache else []
        self.tokens = torch.zeros(batch, 0, dtype=torch.long)

    def step(self, ids_BT: torch.Tensor) -> torch.Tensor:
        B, T = ids_BT.shape
        if not self.spec.with_cache:
            self.tokens = torch.cat([self.tokens, ids_BT], dim=1)
            n = self.tokens.shape[1]
            pos = torch.arange(n).expand(B, n).contiguous()
            logits = self.runner([self.tokens, torch.ones(B, n, dtype=torch.long), pos])[0]
            return logits[:, -T:].float()
        S = self.past[0].shape[2]
        mask = torch.ones(B, S + T, dtype=torch.long)
        pos = (torch.arange(T) + S).expand(B, T).contiguous()
        logits, *self.past = self.runner([ids_BT, mask, pos, *self.past])
        return logits.float()  # (B, T, V)


class ReferenceDecoder:
    """The PyTorch model decoding through its own KV cache."""

    def __init__(self, model: torch.nn.Module, spec: DecoderSpec, batch: int):
        self.model, self.device = model, model_device(model)
        on_gpu = {"device": self.device} if self.device.type != "cpu" else {}
        self.cache = model.new_cache(batch, max_seq_len=spec.max_seq_len, **on_gpu)

    @torch.no_grad()
    def step(self, ids_BT: torch.Tensor) -> torch.Tensor:
        return self.model(ids_BT.to(self.device), cache=self.cache).float().cpu()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _random_ids(spec: DecoderSpec, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, spec.vocab_size, shape, generator=g)


@torch.no_grad()
def decode_parity(model: torch.nn.Module, runner: Runner, spec: DecoderSpec, *, batch: int = 2, prompt_len: int = 5,
                  steps: int = 4, seed: int = 0) -> dict[str, Any]:
    """Prefill ``prompt_len`` random tokens then ``steps`` single-token decode steps; max |logit diff| per step."""
    g = torch.Generator().manual_seed(seed)
    ref, art = ReferenceDecoder(model, spec, batch), ArtifactDecoder(runner, spec, batch)
    ids = _random_ids(spec, (batch, prompt_len), g)
    per_step, ref_all, out_all = [], [], []
    for i in range(steps + 1):
        a, b = ref.step(ids), art.step(ids)
        per_step.append(float((a - b).abs().max()))
        ref_all.append(a.flatten())
        out_all.append(b.flatten())
        if i < steps:
            ids = _random_ids(spec, (batch, 1), g)
    r, o = torch.cat(ref_all), torch.cat(out_all)
    return {"batch": batch, "prompt_len": prompt_len, "decode_steps": steps,
            "prefill_max_abs_diff": per_step[0], "decode_max_abs_diff": max(per_step[1:], default=0.0),
            "max_abs_diff": max(per_step), "mean_abs_diff": float((r - o).abs().mean()),
            "ref_logit_std": float(r.std()), "finite": bool(torch.isfinite(o).all())}


@torch.no_grad()
def random_past_parity(model: torch.nn.Module, runner: Runner, spec: DecoderSpec, *, seed: int = 1,
                       shapes: Sequence[tuple[int, int, int]] = ((1, 1, 0), (3, 2, 6), (2, 5, 1))) -> dict[str, Any]:
    """Random (B, T, S) inputs, random past key/values: artifact vs the eager wrapper, logits and presents."""
    wrapper, device = DecoderWithPast(model, spec), model_device(model)
    g = torch.Generator().manual_seed(seed)
    worst_logits, worst_present = 0.0, 0.0
    for B, T, S in shapes:
        S = S if spec.with_cache else 0
        ids = _random_ids(spec, (B, T), g)
        mask = torch.ones(B, S + T, dtype=torch.long)
        pos = (torch.arange(T) + S).expand(B, T).contiguous()
        past = [torch.randn(B, spec.kv_heads, S, spec.head_dim, generator=g).to(spec.dtype)
                for _ in (spec.past_names if spec.with_cache else [])]
        want = [t.cpu() for t in wrapper(*(t.to(device) for t in (ids, mask, pos, *past)))]
        got = runner([ids, mask, pos, *past])
        worst_logits = max(worst_logits, float((want[0].float() - got[0].float()).abs().max()))
        for w, o in zip(want[1:], got[1:]):
            worst_present = max(worst_present, float((w.float() - o.float()).abs().max()))
    return {"shapes_BTS": [list(s) for s in shapes], "max_abs_diff": worst_logits,
            "present_max_abs_diff": worst_present}


@torch.no_grad()
def greedy(decoder: ArtifactDecoder | ReferenceDecoder, prompt_BT: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation (B, max_new_tokens) through a cached decoder."""
    out, ids = [], prompt_BT
    for _ in range(max_new_tokens):
        nxt = decoder.step(ids)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        ids = nxt
    return torch.cat(out, dim=1)


@torch.no_grad()
def perplexity(decoder: ArtifactDecoder | ReferenceDecoder, tokens_1L: torch.Tensor) -> float:
    """exp(mean next-token NLL) of a (1, L) sequence in one forward pass."""
    logits = decoder.step(tokens_1L)[0, :-1]  # (L-1, V)
    return float(torch.exp(F.cross_entropy(logits, tokens_1L[0, 1:])))


@torch.no_grad()
def sample_tokens(model: torch.nn.Module, spec: DecoderSpec, length: int, seed: int = 0) -> torch.Tensor:
    """A fixed (1, length) sequence sampled from the model itself (seeded), so perplexity is far from chance."""
    g = torch.Generator().manual_seed(seed)
    ref = ReferenceDecoder(model, spec, 1)
    tok = _random_ids(spec, (1, 1), g)
    seq = [tok]
    for _ in range(length - 1):
        probs = torch.softmax(ref.step(tok)[:, -1], dim=-1)
        tok = torch.multinomial(probs, 1, generator=g)
        seq.append(tok)
    return torch.cat(seq, dim=1)


def quality_report(model: torch.nn.Module, spec: DecoderSpec, runner: Runner, tokens_1L: torch.Tensor,
                   *, greedy_tokens: int = 8, seed: int = 0) -> dict[str, Any]:
    """Perplexity (reference vs artifact) on ``tokens_1L`` and greedy agreement from a random prompt."""
    ppl_ref = perplexity(ReferenceDecoder(model, spec, 1), tokens_1L)
    ppl_art = perplexity(ArtifactDecoder(runner, spec, 1), tokens_1L)
    g = torch.Generator().manual_seed(seed)
    prompt = _random_ids(spec, (2, 4), g)
    want = greedy(ReferenceDecoder(model, spec, 2), prompt, greedy_tokens)
    got = greedy(ArtifactDecoder(runner, spec, 2), prompt, greedy_tokens)
    return {"perplexity_tokens": int(tokens_1L.shape[1]), "perplexity_reference": ppl_ref,
            "perplexity_artifact": ppl_art, "perplexity_rel_change": (ppl_art - ppl_ref) / ppl_ref,
            "greedy_tokens": greedy_tokens, "greedy_match": bool(torch.equal(want, got)),
            "greedy_token_agreement": float((want == got).float().mean())}
