"""Sampling from a policy while it trains (online RL: GRPO's completions) through the continuous-batching engine.

:class:`PolicySampler` keeps an inference copy of the policy: the same architecture, in the dtype sampling runs in
(bf16 under a bf16 autocast run, as TRL's vLLM copy), served by a :class:`serve.engine.Engine` (paged KV cache,
CUDA-graph decode steps on a GPU, prefix caching, so the samples of one prompt share its prefill).
``sync(state_dict)`` copies the policy's weights into the copy in place, so the captured graphs stay valid, and
forgets the cached prefixes computed with the old ones; ``sample(prompts, ...)`` runs every prompt to EOS or
``max_new_tokens``, all at once up to ``max_batch_size``. TRL does the same with vLLM (``use_vllm=True``,
``vllm_mode="colocate"``). Registered as the ``lmstack.samplers`` plugin ``paged``, which is how lmstack-rl reaches
it without importing serve.

    sampler = PolicySampler(policy, max_batch_size=64, max_seq_len=1024, dtype=torch.bfloat16, eos_ids=(2,))
    ...                                              # an optimizer step changes the policy
    sampler.sync(policy.state_dict())                # or a LoRA policy's merged weights
    out = sampler.sample(prompt_ids, 256, temperature=1.0, top_p=0.95, seed=step)
    out.tokens[0], out.finish_reasons[0]             # generated ids (EOS included when it ended the row), "stop"
    sampler.score(prompt_ids, out.tokens)            # their log-probabilities under the copy (importance ratios)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serve.decoder import model_device
from serve.engine import Engine, RequestOutput
from serve.sampling import SamplingParams
from specs.config import ServeConfig
from specs.errors import ConfigError, LmstackError


@dataclass(frozen=True)
class SampleOutput:
    """What :meth:`PolicySampler.sample` made, per prompt in order."""

    tokens: list[list[int]]  # generated ids, EOS included when it ended the row
    finish_reasons: list[str]  # "stop" (EOS) or "length"


class PolicySampler:
    """``PolicySampler(model, max_batch_size=, max_seq_len=)``: an engine over a copy of ``model`` (see the module
    docstring).

    ``model``: the policy (a specs LanguageModel with ``config`` whose class builds from it, e.g. TransformerLM);
    only its class, config and device are read, and ``state_dict`` (default ``model.state_dict()``) fills the copy:
    pass a LoRA policy's merged weights. ``max_batch_size``: how many prompts run at once (the KV pool holds that many
    of ``max_seq_len`` tokens, prompt and completion). ``dtype``: the copy's (default the model's). ``eos_ids``: the
    tokens that end a completion. ``decode_graphs`` as :class:`serve.engine.Engine`'s (None: CUDA graphs where the
    model allows)."""

    def __init__(self, model: Any, *, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None,
                 eos_ids: Collection[int] = (), state_dict: Mapping[str, torch.Tensor] | None = None,
                 block_size: int = 16, decode_graphs: bool | None = None):
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "max_seq_len"):
            raise ConfigError("model", f"PolicySampler copies a model built from its config (TransformerLM), got "
                                       f"{type(model).__name__}")
        if max_seq_len > cfg.max_seq_len:
            raise ConfigError("max_seq_len", f"{max_seq_len} exceeds the model's context length ({cfg.max_seq_len}); "
                                             "expected at most that")
        device = model_device(model)
        dtype = dtype or next(model.parameters()).dtype
        with torch.device("meta"):  # no memory and no initialisation: every weight comes from the state dict
            copy = type(model)(cfg).to(dtype)
        copy = copy.to_empty(device=device).eval().requires_grad_(False)
        saved = self._keys = set(copy.state_dict())
        unsaved = [n for n, b in copy.named_buffers() if b is not None and n not in saved]
        if unsaved:
            raise ConfigError("model", f"{type(model).__name__} has buffers outside its state_dict ({unsaved[:3]}), "
                                       "which a copy built empty cannot fill")
        self.model = copy
        self.sync(model.state_dict() if state_dict is None else state_dict, _engine=False)
        self.generator = torch.Generator(device=device)
        config = ServeConfig.from_dict({"max_batch_size": max_batch_size, "block_size": block_size,
                                        "max_seq_len": max_seq_len,
                                        "num_blocks": max_batch_size * math.ceil(max_seq_len / block_size)},
                                       path="sampler")
        self.engine = Engine(copy, None, config, eos_ids=tuple(int(t) for t in eos_ids), max_waiting=2**31,
                             decode_graphs=decode_graphs, generator=self.generator)
        self.max_seq_len = max_seq_len

    @torch.no_grad()
    def sync(self, state_dict: Mapping[str, torch.Tensor], *, _engine: bool = True) -> None:
        """Copy ``state_dict`` (the policy's keys, any float dtype, on any device) into the copy's weights in
        place, and forget the cached prompt prefixes. Every weight must be there (strict)."""
        missing = sorted(self._keys - set(state_dict))
        unexpected = sorted(set(state_dict) - self._keys)
        if missing or unexpected:
            raise ConfigError("state_dict", f"does not fit the sampler's copy of the policy: missing {missing[:4]}, "
                                            f"unexpected {unexpected[:4]} (a LoRA policy needs its merged weights)")
        try:
            self.model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:  # shapes
            raise ConfigError("state_dict", "does not fit the sampler's copy of the policy: "
                                            + " ".join(str(exc).split())) from None
        if _engine:
            self.engine.reset_prefix_cache()

    @torch.no_grad()
    def score(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
              temperature: float = 1.0, rows: int = 8) -> list[torch.Tensor]:
        """Each completion's per-token log-probabilities under the copy (fp32, on the host): the log-softmax of its
        logits over ``temperature`` given the prompt and the completion's tokens before, ``rows`` sequences a
        forward. What a trainer divides the policy's probabilities by to correct for the copy's numerics."""
        if len(prompts) != len(completions):
            raise ConfigError("completions", f"{len(completions)} completions for {len(prompts)} prompts")
        if temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {temperature}")
        device = model_device(self.model)
        out: list[torch.Tensor] = []
        for i in range(0, len(prompts), rows):
            seqs = [list(p) + list(c) for p, c in zip(prompts[i:i + rows], completions[i:i + rows])]
            width = max(len(s) for s in seqs)
            if width > self.max_seq_len:
                raise ConfigError("completions", f"a sequence of {width} tokens exceeds the sampler's max_seq_len "
                                                 f"{self.max_seq_len}")
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
            logits = self.model(ids.to(device))  # right padding: a causal model's real positions do not see it
            logp = torch.log_softmax(logits.float() / temperature, -1)
            for r, (p, c) in enumerate(zip(prompts[i:i + rows], completions[i:i + rows])):
                n = len(p)
                targets = torch.tensor(list(c), device=device)
                out.append(logp[r, n - 1:n - 1 + len(c)].gather(-1, targets[:, None])[:, 0].cpu())
        return out

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int | None = None) -> SampleOutput:
        """Complete every prompt (token-id lists) with up to ``max_new_tokens`` tokens, sampled at ``temperature``
        (0: greedy) after ``top_k`` / ``top_p`` / ``min_p`` truncation, drawn from this sampler's generator seeded
        with ``seed`` (None: where the last call left it). Each call starts with no cached prefixes, so the
        same prompts, weights and seed give the same tokens. A prompt the context cannot hold raises
        ContextLengthError before any work."""
        if not prompts:
            raise ConfigError("prompts", "is empty; pass at least one list of token ids")
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                min_p=min_p)
        for p in prompts:
            self.engine.check_request(p, params)
        self.engine.reset_prefix_cache()  # the same prefix hits, so the same batches and draws, every call
        if seed is not None:
            self.generator.manual_seed(seed)
        tokens: list[list[int]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        errors: list[LmstackError] = []

        def sink(i: int) -> Any:
            def on_output(out: RequestOutput) -> None:
                tokens[i].extend(out.token_ids)
                if out.finished:
                    reasons[i] = out.finish_reason
                    if out.error is not None:
                        errors.append(out.error)

            return on_output

        for i, p in enumerate(prompts):
            self.engine.submit(p, params, on_output=sink(i), request_id=f"sample-{i}")
        self.engine.run_until_done(max_steps=2**31)
        if errors:
            raise errors[0]
        return SampleOutput(tokens, [r or "length" for r in reasons])
