"""Offline batch serving: every request submitted at once to a fresh :class:`serve.engine.Engine`, stepped on the
calling thread until all finish, with the host time of every output token (vLLM's ``LLM.generate`` / its
benchmark_throughput, with per-token timestamps for TTFT and inter-token latency).

    from serve.offline import run_requests
    results = run_requests(model, prompts, 256, max_batch_size=64)   # one dict per prompt, in order
    results[0]["token_ids"], results[0]["token_times"]               # exactly 256 ids, perf_counter() seconds

EOS is disabled and decoding is greedy, so every request makes exactly ``max_new_tokens`` tokens: the amount of work
does not depend on the (possibly random) weights. Registered as the ``lmstack.engines`` entry point ``paged``, which
is how ``python -m eval.bench engine`` reaches it without importing serve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from serve.engine import Engine, RequestOutput
from serve.sampling import SamplingParams, StructuredOutput
from specs.config import ServeConfig
from specs.errors import ConfigError, LmstackError


def run_requests(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, max_batch_size: int,
                 block_size: int = 16, num_blocks: int | None = None, max_steps: int = 1_000_000,
                 tokenizer: Any = None, structured: StructuredOutput | Mapping[str, Any] | None = None,
                 adapters: Mapping[str, str] | None = None, request_adapters: Sequence[str | None] | None = None,
                 max_loras: int = 0, max_lora_rank: int = 16, **config_overrides: Any) -> list[dict[str, Any]]:
    """Serve ``prompts`` (token-id lists) greedily on ``model``, at most ``max_batch_size`` running at once.

    ``num_blocks`` None sizes the KV pool for ``max_batch_size`` requests of the longest prompt plus
    ``max_new_tokens`` (no preemption); ``config_overrides`` are further :class:`specs.config.ServeConfig` fields.
    ``structured`` (a StructuredOutput or its fields) constrains every request (:mod:`serve.structured`; needs
    ``tokenizer``). With EOS disabled its
    grammar must always allow one more token (a regex such as ``[a-z ]*``): one whose output can be complete
    leaves such a request nothing to sample.
    ``adapters`` (name -> LoRA adapter directory) are served in ``max_loras`` slots (default: one per adapter) of
    rank up to ``max_lora_rank``; ``request_adapters[i]`` names prompt i's adapter (None: the base model).
    Returns, per prompt in order, a dict with ``request_id``, ``token_ids`` (the ``max_new_tokens`` generated ids),
    ``token_times`` (``time.perf_counter()`` seconds when each token reached the host), ``token_steps`` (index of the
    engine step that produced each token), ``submit_time`` (when all requests were submitted, same clock),
    ``num_prompt_tokens``, ``finish_reason``, and the run's ``engine_steps`` and ``preemptions``.
    """
    if not prompts:
        raise ConfigError("prompts", "is empty; pass at least one list of token ids")
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens", f"must be at least 1, got {max_new_tokens}")
    # the context the longest request needs, held to the model's (a request past it then fails as too long)
    longest = min(max(len(p) for p in prompts) + max_new_tokens, int(model.config.max_seq_len))
    fields = {"max_batch_size": max_batch_size, "block_size": block_size, "max_seq_len": longest, **config_overrides}
    if num_blocks is None:
        num_blocks = max_batch_size * math.ceil((fields["max_seq_len"] or longest) / block_size)
    config = ServeConfig.from_dict({**fields, "num_blocks": num_blocks}, path="serve")
    if isinstance(structured, Mapping):
        structured = StructuredOutput.from_dict(structured, path="structured")
    if request_adapters is not None and len(request_adapters) != len(prompts):
        raise ConfigError("request_adapters", f"has {len(request_adapters)} entries for {len(prompts)} prompts; "
                                              "expected one adapter name (or None) per prompt")
    engine = Engine(model, tokenizer, config, eos_ids=(), max_waiting=len(prompts),
                    max_loras=(max_loras or len(adapters)) if adapters else 0, max_lora_rank=max_lora_rank)
    for name, path in (adapters or {}).items():
        engine.add_adapter(name, path)
    per_request = list(request_adapters) if request_adapters is not None else [None] * len(prompts)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True, structured=structured)
    records = [{"request_id": f"req-{i}", "token_ids": [], "token_times": [], "token_steps": [],
                "num_prompt_tokens": len(p), "finish_reason": None, "error": None} for i, p in enumerate(prompts)]
    step = 0

    def sink(rec: dict[str, Any]) -> Any:
        def on_output(out: RequestOutput) -> None:
            now = time.perf_counter()  # the token ids are host ints here: the device already produced them
            rec["token_ids"].extend(out.token_ids)
            rec["token_times"].extend([now] * len(out.token_ids))
            rec["token_steps"].extend([step] * len(out.token_ids))
            if out.finished:
                rec["finish_reason"], rec["error"] = out.finish_reason, out.error

        return on_output

    t0 = time.perf_counter()
    for p, rec, adapter in zip(prompts, records, per_request):
        engine.submit(p, params, on_output=sink(rec), request_id=rec["request_id"], adapter=adapter)
    while engine.has_work():
        if step >= max_steps:
            raise LmstackError(f"requests still running after {max_steps} engine steps")
        engine.step()
        step += 1
    for rec in records:
        if rec["error"] is not None or len(rec["token_ids"]) != max_new_tokens:
            raise LmstackError(f"request {rec['request_id']} ended with {rec['finish_reason']!r} after "
                               f"{len(rec['token_ids'])} of {max_new_tokens} tokens: {rec['error']}")
        del rec["error"]
        rec.update(submit_time=t0, engine_steps=step, preemptions=engine.stats.preemptions)
    return records
