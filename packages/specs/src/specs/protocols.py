"""Protocols that let packages meet without importing each other (ARCHITECTURE.md's planes).

Shapes use the legend of :mod:`specs.tensor_spec`: B batch rows, T new tokens, S cached tokens, KVH key/value
heads, Dh head dim, V vocab. Implementations: ``model.lm.TransformerLM`` (LanguageModel), ``attn.cache``
(StaticKVCache, PagedKVCache), ``data.tokenizer`` (Tokenizer), ``viz`` backends (MetricsLogger), ``safety.serving``
(TextGuard, ToolCallGuard).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class KVCache(Protocol):
    """Per-layer key/value store for incremental decoding, an opaque handle with no globals.

    A forward pass over T new tokens calls ``append(layer, k, v)`` once per layer, then the model calls
    ``advance(T)`` once. Row b's new tokens occupy positions ``seq_lens[b] .. seq_lens[b]+T-1``.

    Optional capability (not a Protocol member, so existing caches still conform): ``fixed_shape = True`` says that
    ``append`` returns ``max_seq_len`` key slots per row and that the model must mask slots at or past
    ``seq_lens[b] + T`` with tensor ops, never reading ``seq_lens`` back to the host (``.tolist()``). It serves CUDA
    graphs (``attn.cache.FixedKVCache``) and tracing: under torch.export / torch.jit.trace ``max_seq_len`` may be a
    SymInt or traced size (``export.cache.PastKVCache``: past length + T), and a host read would fix the batch axis.
    """

    n_layers: int

    @property
    def seq_lens(self) -> Any:
        """(B,) int tensor: tokens already cached for each active batch row."""

    def append(self, layer: int, k: Any, v: Any) -> tuple[Any, Any]:
        """Store k, v (B, KVH, T, Dh) for ``layer``; return that layer's cached keys and values including
        the new ones, (B, KVH, S, Dh) with S = max(seq_lens) + T; rows shorter than S are padded (mask them
        with ``seq_lens``)."""

    def read(self, layer: int) -> tuple[Any, Any]:
        """Cached keys and values of ``layer`` committed so far, (B, KVH, S, Dh)."""

    def advance(self, n_tokens: int) -> None:
        """Commit the T tokens just appended to every layer."""

    def evict(self, rows: Sequence[int]) -> None:
        """Forget everything cached for these batch rows (their slots can be reused)."""

    def reset(self) -> None:
        """Forget everything."""


@runtime_checkable
class PagedKVCache(KVCache, Protocol):
    """A KVCache over a pool of fixed-size blocks with a block table per sequence (vLLM's PagedAttention).

    Sequences are named by hashable ids. ``set_active`` chooses which sequences are the batch rows of the next
    forward. With prefix caching, full blocks whose token prefix is already cached are shared (ref-counted).
    """

    block_size: int
    num_blocks: int

    def add_sequence(self, seq_id: Hashable, prompt_ids: Sequence[int] = (), *, salt: str | None = None) -> int:
        """Register a sequence; return how many leading prompt tokens are already cached (prefix hit). Prefixes
        are shared only between sequences of equal ``salt`` (None: the unsalted ones)."""

    def reserve(self, seq_id: Hashable, n_tokens: int) -> None:
        """Ensure room for ``n_tokens`` more tokens of ``seq_id``; raise CacheFullError if the pool cannot."""

    def free(self, seq_id: Hashable) -> None:
        """Release the sequence's blocks (shared prefix blocks stay while others use them)."""

    def set_active(self, seq_ids: Sequence[Hashable]) -> None:
        """Make these sequences, in this order, the batch rows of the next forward."""

    def num_free_blocks(self) -> int:
        """Blocks that are neither in use nor pinned by the prefix cache."""

    def block_table(self, seq_id: Hashable) -> list[int]:
        """The pool block ids that hold ``seq_id``'s tokens, in order."""


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM: ``model(input_ids, positions=None, cache=None, attn_mask=None) -> logits (B, T, V)``.

    ``attn_mask`` is (B, S+T) with 1 for real tokens and 0 for padding (left padding in batched generation).
    ``positions`` default to ``cache.seq_lens[b] + arange(T)``, minus padding. ``document_ids`` (B, T) makes
    attention block-diagonal over packed documents.
    """

    config: Any

    def __call__(
        self,
        input_ids: Any,
        positions: Any = None,
        cache: KVCache | None = None,
        attn_mask: Any = None,
        document_ids: Any = None,
    ) -> Any: ...

    def new_cache(
        self, batch_size: int, max_seq_len: int | None = None, *, kind: str = "static", **kwargs: Any
    ) -> KVCache: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. Special ids are None when the tokenizer has no such token."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]: ...

    def fingerprint(self) -> str:
        """sha256 hex of the tokenizer's serialised definition (recorded in shard manifests)."""


@runtime_checkable
class MetricsLogger(Protocol):
    """Where scalars and text go (CSV, JSONL, TensorBoard, W&B). Buffered; ``flush`` makes them durable."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class TrainerCallback(Protocol):
    """Hooks the trainer calls, so viz and governance plug in without train importing them.

    Implement any subset; the trainer calls a hook only if the object has it.
    """

    def on_step(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None: ...

    def on_checkpoint(self, trainer: Any, path: str) -> None: ...

    def on_eval(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None: ...

    def on_end(self, trainer: Any) -> None: ...


@runtime_checkable
class OutputGuard(Protocol):
    """One response's text on its way to the client, checked delta by delta: ``feed(delta)`` returns the text that
    may be sent now (it may hold some back, redact, or stop), ``finish()`` the rest; once ``blocked`` no more text
    passes and ``message`` says why."""

    blocked: bool
    message: str

    def feed(self, delta: str) -> str: ...

    def finish(self) -> str: ...


@runtime_checkable
class TextGuard(Protocol):
    """Guardrails a server applies to what enters and leaves the model (the plugin group ``lmstack.guards``;
    lmstack-safety's ``policy``): ``check_input(text) -> (allowed, text the model sees, message when refused)``, and
    ``output()`` a fresh :class:`OutputGuard` for each response."""

    name: str

    def check_input(self, text: str) -> tuple[bool, str, str]: ...

    def output(self) -> OutputGuard: ...


@runtime_checkable
class ToolCallGuard(Protocol):
    """A guard that also checks the function calls a model makes (serve's tool calling):
    ``check_tool_call(name, arguments JSON) -> (allowed, the arguments to send (redacted where a rule says),
    message when refused)``. lmstack-safety's ``policy`` guard applies its ``tool`` rules."""

    def check_tool_call(self, name: str, arguments: str) -> tuple[bool, str, str]: ...


class TokenStream(Protocol):
    """What a streaming generator yields: token id and the text delta it adds."""

    def __iter__(self) -> Iterator[tuple[int, str]]: ...
