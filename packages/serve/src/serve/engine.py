"""A continuous-batching engine over the paged KV cache (Orca, Yu et al. 2022; vLLM, Kwon et al. 2023).

Every ``step()`` (1) applies submissions and cancellations, (2) admits waiting requests first come first served:
each is registered with the paged cache (reusing cached blocks of a shared prompt prefix), given room for its prompt
and prefilled, producing its first token, and (3) decodes one token for every other running request in a single
forward whose rows have different lengths. A request that finishes (EOS, stop token or string, max tokens) or is
cancelled frees its blocks at once. When the pool runs dry during decoding, the most recently admitted request is
preempted by recomputation (vLLM's policy): its blocks are freed and it waits at the head of the queue to be
prefilled again with its prompt plus the tokens it already produced. A request that could never fit is rejected
when submitted (:mod:`serve.errors`), and a full waiting queue raises ServerBusyError.

The engine owns the model and cache: only the thread that calls ``step()`` touches them. ``submit`` and ``abort``
are thread-safe; ``start()`` runs ``step()`` in a background thread, and :class:`serve.async_engine.AsyncEngine`
bridges it to asyncio. Outputs go to each request's ``on_output`` callback, called on the engine thread.

Legend: B running rows, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from serve.decoder import keeps_logits, model_device
from serve.errors import ContextLengthError, RequestTooLargeError, ServerBusyError
from serve.generate import prompt_token_logprobs
from serve.graphs import DecodeGraphs
from serve.lora import Adapter, AdapterSlots
from serve.sampling import SamplingParams, TokenLogprobs, apply_penalties, make_generator, sample, token_counts
from serve.sampling import token_logprobs as raw_logprobs
from serve.state import SequenceState
from serve.structured import GrammarBackend
from specs.config import ServeConfig
from specs.errors import CacheFullError, ConfigError, LmstackError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request (at most one new token)."""

    request_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    logprobs: tuple[TokenLogprobs, ...] = ()
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # with the first output, when asked for
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: LmstackError | None = None


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    state: SequenceState
    on_output: Callable[[RequestOutput], None]
    generator: torch.Generator | None
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    sent_prompt_logprobs: bool = False
    matcher: Any = None  # structured outputs: the request's grammar matcher (serve.structured)
    adapter: Any = None  # its LoRA adapter (serve.lora.Adapter), None: the base model
    slot: int | None = None  # the adapter slot it holds while running


@dataclass
class EngineStats:
    """Counters since start and gauges of the current step, for /metrics."""

    running: int = 0
    waiting: int = 0
    free_blocks: int = 0
    num_blocks: int = 0
    prompt_tokens: int = 0  # prompt tokens admitted
    cached_prompt_tokens: int = 0  # of which served from the prefix cache
    generation_tokens: int = 0
    preemptions: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # by finish reason
    steps: int = 0


class Engine:
    """Serve many requests at once on ``model`` (a specs LanguageModel with a paged cache)."""

    def __init__(self, model: Any, tokenizer: Any = None, config: ServeConfig | None = None, *,
                 eos_ids: Collection[int] | None = None, max_waiting: int = 1024, max_prefill_tokens: int = 4096,
                 decode_graphs: bool | None = None, fuse: bool = True, generator: torch.Generator | None = None,
                 max_loras: int = 0, max_lora_rank: int = 16, lora_targets: Sequence[str] | str | None = None):
        """``decode_graphs``: decode through fixed-shape views of the paged cache, captured as CUDA graphs on a GPU
        (:mod:`serve.graphs`); None = on wherever the model supports it. False: eager steps over the paged cache.
        ``fuse``: ``model.fuse_projections()`` first, when it has one (in place; same outputs and state_dict keys).
        ``generator``: what requests without a ``seed`` sample with (on the model's device; the ``generator``
        attribute; one draw for the whole batch when no request of a step has a seed); None: torch's global one.
        ``max_loras`` > 0: requests may name a LoRA adapter (``add_adapter``), up to that many in a step, of rank
        up to ``max_lora_rank``, on the layers ``lora_targets`` names (default: every projection; :mod:`serve.lora`)."""
        cfg = config or ServeConfig()
        if fuse and hasattr(model, "fuse_projections"):
            model.fuse_projections()
        self.adapters: AdapterSlots | None = None
        if max_loras:
            self.adapters = AdapterSlots(model, max_loras=max_loras, max_rank=max_lora_rank,
                                         max_rows=cfg.max_batch_size, targets=lora_targets)
            self.adapters.set_rows([], always=True)  # decode graphs capture the LoRA term
        self.model = model
        self.tokenizer = tokenizer
        self.config = cfg
        self.vocab_size = int(model.config.vocab_size)
        if cfg.max_seq_len is not None and cfg.max_seq_len > model.config.max_seq_len:
            raise ConfigError("serve.max_seq_len", f"{cfg.max_seq_len} exceeds the model's context length "
                                                   f"(its max_seq_len, {model.config.max_seq_len}); expected at "
                                                   "most that")
        self.max_seq_len = cfg.max_seq_len or model.config.max_seq_len
        self.max_batch_size = cfg.max_batch_size
        self.block_size = cfg.block_size
        num_blocks = cfg.num_blocks or cfg.max_batch_size * math.ceil(self.max_seq_len / cfg.block_size)
        scratch = decode_graphs is not False  # a decode view's padding rows take one block of their own
        self.cache = model.new_cache(0, kind="paged", block_size=cfg.block_size, num_blocks=num_blocks + scratch,
                                     prefix_caching=cfg.prefix_caching)
        eos = getattr(tokenizer, "eos_id", None) if eos_ids is None else None
        self.eos_ids = frozenset(eos_ids if eos_ids is not None else (() if eos is None else (eos,)))
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.device = model_device(model)
        self.generator = generator
        self._grammars: GrammarBackend | None = None
        self.graphs = None
        if decode_graphs is not False:
            self.graphs = DecodeGraphs.try_build(model, self.cache, self.max_batch_size, self.max_seq_len,
                                                 capture=self.device.type == "cuda")
            if self.graphs is None and decode_graphs:
                raise ConfigError("decode_graphs", "this model's decode steps need a mask, so they cannot run "
                                  "through fixed-shape views (see the log); pass decode_graphs=None or False")
        self.num_blocks = num_blocks + int(scratch and self.graphs is None)  # blocks requests can use
        num_blocks = self.num_blocks
        self.stats = EngineStats(num_blocks=num_blocks, free_blocks=num_blocks)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._inbox: deque[_Request] = deque()
        self._aborts: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []

    # --- thread-safe API -----------------------------------------------------------------------------------
    def check_request(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise the error a submission would get, without submitting (ContextLengthError, RequestTooLargeError)."""
        n = len(prompt_ids)
        if n == 0:
            raise ConfigError("prompt", "is empty; at least one token is needed")
        bad = next((t for t in prompt_ids if not 0 <= int(t) < self.vocab_size), None)
        if bad is not None:
            raise ConfigError("prompt", f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        total = n + params.max_new_tokens
        if n >= self.max_seq_len or total > self.max_seq_len:
            raise ContextLengthError("max_tokens" if n < self.max_seq_len else "prompt",
                                     f"this model's maximum context length is {self.max_seq_len} tokens, but "
                                     f"{total} were requested ({n} in the prompt, {params.max_new_tokens} to generate)")
        blocks = math.ceil(total / self.block_size)
        if blocks > self.num_blocks:
            raise RequestTooLargeError(f"the request needs {blocks} KV-cache blocks of {self.block_size} tokens but "
                                       f"the pool has {self.num_blocks}")

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, *, on_output: Callable[[RequestOutput], None],
               request_id: str | None = None, adapter: str | None = None) -> str:
        """Queue a request; its outputs go to ``on_output`` (on the engine thread). Returns its id. ``adapter``:
        the name of a LoRA adapter added with ``add_adapter`` (ConfigError for an unknown one)."""
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_request(prompt_ids, params)
        lora = None if adapter is None else self.adapter(adapter)
        rid = request_id or f"req-{next(self._ids)}"
        state = SequenceState(prompt_ids, params, tokenizer=self.tokenizer, eos_ids=self.eos_ids)
        req = _Request(rid, prompt_ids, params, state, on_output, make_generator(params.seed, self.device),
                       adapter=lora)
        if params.structured is not None:
            req.matcher = self.grammars().matcher(params.structured)
        with self._lock:
            if len(self.waiting) + len(self._inbox) >= self.max_waiting:
                raise ServerBusyError(f"{self.max_waiting} requests are already waiting for KV-cache room; retry later")
            self._inbox.append(req)
        self._wake.set()
        return rid

    def add_adapter(self, name: str, path: str) -> Adapter:
        """Register the LoRA adapter (PEFT's files) in ``path`` as ``name``, checked against the model; any thread."""
        return self._lora().add(name, path)

    def remove_adapter(self, name: str) -> None:
        """Unregister ``name``: waiting requests that named it fail, running ones finish with it; any thread."""
        self._lora().remove(name)

    def adapter(self, name: str) -> Adapter:
        """The registered adapter ``name`` (ConfigError naming the loaded ones otherwise)."""
        found = self._lora().get(name)
        if found is None:
            raise ConfigError("adapter", f"no LoRA adapter named {name!r}; loaded: {self._lora().names() or 'none'}")
        return found

    def _lora(self) -> AdapterSlots:
        if self.adapters is None:
            raise ConfigError("adapter", "this engine serves no LoRA adapters; build it with max_loras >= 1 (the "
                                         "server's --enable-lora)")
        return self.adapters

    def grammars(self) -> GrammarBackend:
        """The structured-output compiler over this engine's tokenizer (built on first use)."""
        if self._grammars is None:
            if self.tokenizer is None or not callable(getattr(self.tokenizer, "id_to_token", None)):
                raise ConfigError("response_format", "structured outputs need the model's tokenizer (with "
                                                     "id_to_token); this engine has none")
            self._grammars = GrammarBackend(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
        return self._grammars

    def reset_prefix_cache(self) -> int:
        """Forget the KV cache's cached prompt prefixes (vLLM's ``reset_prefix_cache``), for a model whose weights
        were just changed in place: their keys and values are the old weights'. Call with no request running or
        waiting (LmstackError otherwise), from the thread that steps. Returns how many prefixes were forgotten."""
        if self.has_work():
            raise LmstackError("reset_prefix_cache() while requests are running or waiting; let them finish first")
        return self.cache.reset_prefix_cache()

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed at the next step."""
        with self._lock:
            self._aborts.add(request_id)
        self._wake.set()

    def is_running(self) -> bool:
        """Whether the background thread is stepping."""
        return self._thread is not None and self._thread.is_alive()

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._inbox or self._aborts)

    # --- background thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lmstack-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # a bug or device error: fail the affected requests, keep serving
                log.exception("engine step failed")
                self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        err = exc if isinstance(exc, LmstackError) else LmstackError(f"engine error: {exc}")
        for req in [*self.running, *self.waiting]:
            self._release(req)
            self._emit(req, RequestOutput(req.request_id, finished=True, finish_reason="error", error=err))
        self.running.clear()
        self.waiting.clear()

    # --- one iteration -------------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit, prefill and decode once. Call from one thread only."""
        with self._lock:
            self.waiting.extend(self._inbox)
            self._inbox.clear()
            aborts, self._aborts = self._aborts, set()
        for rid in aborts:
            self._abort_now(rid)
        with torch.inference_mode():
            prefilled = self._admit()
            self._decode([r for r in self.running if r not in prefilled])
        s = self.stats
        s.running, s.waiting, s.free_blocks, s.steps = (len(self.running), len(self.waiting),
                                                         self.cache.num_free_blocks(), s.steps + 1)

    def _abort_now(self, rid: str) -> None:
        for queue in (self.running, self.waiting):
            for req in list(queue):
                if req.request_id == rid:
                    queue.remove(req)
                    self._release(req)
                    self._finish_stats("abort")
                    self._emit(req, RequestOutput(rid, finished=True, finish_reason="abort"))

    def _release(self, req: _Request) -> None:
        with contextlib.suppress(LookupError):  # never admitted, or already preempted
            self.cache.free(req.request_id)
        if req.slot is not None and self.adapters is not None:
            self.adapters.release(req.slot)
            req.slot = None

    def _rows(self, reqs: Sequence[_Request], *, graph: bool = False) -> None:
        """Tell the adapter slots which slot each row of the next forward uses."""
        if self.adapters is not None:
            self.adapters.set_rows([r.slot for r in reqs], always=graph)

    def _admit(self) -> set[_Request]:
        """Admit waiting requests (first come first served, within the prefill token budget and the KV pool), then
        prefill them: requests with the same number of uncached tokens share one forward."""
        admitted: list[tuple[_Request, list[int], int, bool]] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
            req = self.waiting[0]
            tokens = req.prompt_ids + req.state.output_ids
            if admitted and len(tokens) > budget:
                break
            want_plp = req.params.prompt_logprobs is not None and req.prompt_logprobs is None
            if req.adapter is not None and req.adapter.removed:
                self.waiting.popleft()
                self._finish_stats("error")
                self._emit(req, RequestOutput(req.request_id, finished=True, finish_reason="error", error=LmstackError(
                    f"the LoRA adapter {req.adapter.name!r} was unloaded before this request ran")))
                continue
            if req.adapter is not None:
                req.slot = self.adapters.acquire(req.adapter)
                if req.slot is None:
                    break  # every adapter slot is held by running requests: wait for one
            # Prompt logprobs need logits for every prompt token, so such a request skips the prefix cache.
            # an adapter's keys and values are its own: its prefixes are cached apart (attn 0.9's salt)
            salt = {} if req.adapter is None else {"salt": req.adapter.salt}
            hit = self.cache.add_sequence(req.request_id, () if want_plp else tokens, **salt)
            try:
                self.cache.reserve(req.request_id, len(tokens) - hit)
            except CacheFullError:
                self._release(req)
                if not self.running and not admitted:
                    self.waiting.popleft()
                    self._finish_stats("error")
                    self._emit(req, RequestOutput(req.request_id, finished=True, finish_reason="error",
                                                  error=RequestTooLargeError(f"{len(tokens)} tokens do not fit the "
                                                                             "empty KV cache")))
                    continue
                break  # wait for running requests to free blocks
            self.waiting.popleft()
            budget -= len(tokens) - hit
            if req.state.output_ids == []:
                req.num_cached_tokens = hit
                self.stats.prompt_tokens += len(tokens)
                self.stats.cached_prompt_tokens += hit
            admitted.append((req, tokens, hit, want_plp))
        groups: dict[int, list[tuple[_Request, list[int], int, bool]]] = {}
        for item in admitted:
            groups.setdefault(len(item[1]) - item[2], []).append(item)
        for group in groups.values():
            self._prefill(group)
        return {item[0] for item in admitted}

    def _prefill(self, group: list[tuple[_Request, list[int], int, bool]]) -> None:
        """One forward over requests with equal numbers of uncached tokens; each gets its first token."""
        self.cache.set_active([req.request_id for req, *_ in group])
        ids = torch.tensor([tokens[hit:] for _, tokens, hit, _ in group], dtype=torch.long, device=self.device)
        # (G, n, V) where a request wants its prompt's logprobs, else the last position's alone where the model can
        keep = {} if any(want for *_, want in group) or not keeps_logits(self.model) else {"logits_to_keep": 1}
        self._rows([req for req, *_ in group])
        logits = self.model(ids, cache=self.cache, **keep)
        masks = self._masks([req for req, *_ in group])  # on the host while the device runs the forward
        sample_rows, sample_reqs = [], []
        for i, (req, _, _, want_plp) in enumerate(group):
            if want_plp:
                req.prompt_logprobs = prompt_token_logprobs(logits[i, : len(req.prompt_ids)].float(), req.prompt_ids,
                                                            req.params.prompt_logprobs)
            self.running.append(req)
            if req.params.max_new_tokens == 0:
                self._retire(req, RequestOutput(req.request_id, finished=True, finish_reason="length",
                                                num_prompt_tokens=len(req.prompt_ids),
                                                num_cached_tokens=req.num_cached_tokens))
                continue
            sample_rows.append(i)
            sample_reqs.append(req)
        if sample_reqs:
            if masks is not None and len(sample_rows) < len(group):  # some requests wanted no token: re-index
                masks = self._masks(sample_reqs)
            self._sample(sample_reqs, logits[sample_rows, -1].float(), masks)

    def _decode(self, batch: list[_Request]) -> None:
        ready: list[_Request] = []
        for req in batch:
            if req not in self.running:
                continue  # preempted below to make room for an earlier request
            while True:
                try:
                    self.cache.reserve(req.request_id, 1)
                    ready.append(req)
                    break
                except CacheFullError:
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is req:
                        break
                    if victim in ready:
                        ready.remove(victim)
        if not ready:
            return
        self._rows(ready, graph=self.graphs is not None)
        if self.graphs is not None:
            logits = self.graphs.step([r.request_id for r in ready], [r.state.output_ids[-1] for r in ready]).float()
        else:
            self.cache.set_active([r.request_id for r in ready])
            last = torch.tensor([[r.state.output_ids[-1]] for r in ready], dtype=torch.long, device=self.device)
            logits = self.model(last, cache=self.cache)[:, -1].float()  # (B, V)
        self._sample(ready, logits, self._masks(ready))  # masks filled while the device runs the step

    def _preempt(self, req: _Request) -> None:
        self.running.remove(req)
        self._release(req)
        self.waiting.appendleft(req)
        self.stats.preemptions += 1

    def _masks(self, reqs: list[_Request]) -> tuple[list[int], torch.Tensor] | None:
        """Structured outputs: the constrained rows' next-token bitmask (serve.structured), None without any."""
        if all(r.matcher is None for r in reqs):
            return None
        return self.grammars().fill([r.matcher for r in reqs])

    def _sample(self, reqs: list[_Request], logits_BV: torch.Tensor,
                masks: tuple[list[int], torch.Tensor] | None = None) -> None:
        params = [r.params for r in reqs]
        processed = logits_BV
        if any(p.needs_penalties for p in params):
            out = token_counts([r.state.output_ids for r in reqs], self.vocab_size, logits_BV.device)
            seen = out + token_counts([r.prompt_ids for r in reqs], self.vocab_size, logits_BV.device)
            processed = apply_penalties(logits_BV, params, seen, out)
        if masks is not None:
            processed = self.grammars().apply(processed, masks)
        gens = [r.generator for r in reqs]
        if all(g is None for g in gens):  # one draw for the batch
            tokens = sample(processed, params, self.generator)
        else:
            tokens = sample(processed, params, [self.generator if g is None else g for g in gens])
        top_n = [p.logprobs or 0 for p in params]
        lps = raw_logprobs(logits_BV, tokens, top_n) if any(p.logprobs is not None for p in params) else None
        now = time.monotonic()
        picked = tokens.tolist()  # one copy to the host for the batch
        for b, req in enumerate(reqs):
            tok = picked[b]
            if req.matcher is not None and not req.matcher.accept_token(tok):
                # the grammar left no token (one that can be complete, with no end-of-sequence token to end it):
                # this request fails, the others go on
                err = LmstackError(f"{req.request_id}: its structured output allows no further token and the model "
                                   "has no end-of-sequence token to end it with")
                self._retire(req, RequestOutput(req.request_id, finished=True, finish_reason="error", error=err,
                                                num_prompt_tokens=len(req.prompt_ids),
                                                num_output_tokens=len(req.state.output_ids)))
                continue
            lp = lps[b] if lps is not None and req.params.logprobs is not None else None
            delta = req.state.push(tok, lp)
            if req.matcher is not None and not req.state.finished and req.matcher.is_terminated():
                delta += req.state.finish_stop()  # complete (its end token taken even with ignore_eos)
            self.stats.generation_tokens += 1
            req.first_token_at = req.first_token_at or now
            length_cap = len(req.prompt_ids) + len(req.state.output_ids) >= self.max_seq_len
            if not req.state.finished and length_cap:
                delta += req.state.finish_length()
            out = RequestOutput(req.request_id, (tok,), delta, (lp,) if lp is not None else (),
                                finished=req.state.finished, finish_reason=req.state.finish_reason,
                                num_prompt_tokens=len(req.prompt_ids), num_output_tokens=len(req.state.output_ids),
                                num_cached_tokens=req.num_cached_tokens)
            if req.state.finished:
                self._retire(req, out)
            else:
                self._emit(req, out)

    def _retire(self, req: _Request, out: RequestOutput) -> None:
        self.running.remove(req)
        self._release(req)
        self._finish_stats(out.finish_reason or "length")
        self._emit(req, out)

    def _finish_stats(self, reason: str) -> None:
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    def _emit(self, req: _Request, out: RequestOutput) -> None:
        if req.prompt_logprobs is not None and not req.sent_prompt_logprobs:
            req.sent_prompt_logprobs = True
            out = dataclasses.replace(out, prompt_logprobs=req.prompt_logprobs)
        try:
            req.on_output(out)
        except Exception:  # a consumer that went away must not stop the engine
            log.exception("on_output callback of %s failed", req.request_id)

    def run_until_done(self, max_steps: int = 100_000) -> None:
        """Step until every submitted request has finished (tests and offline batch use)."""
        for _ in range(max_steps):
            if not self.has_work():
                return
            self.step()
        raise RuntimeError(f"requests still running after {max_steps} steps")
