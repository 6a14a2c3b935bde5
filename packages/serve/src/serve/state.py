"""Per-sequence decoding state shared by ``generate`` and the engine: tokens, text, logprobs and finish rules.

A sequence finishes with reason ``"stop"`` on an EOS token (unless ``ignore_eos``), a ``stop_token_ids`` token or
a stop string, and with ``"length"`` when ``max_new_tokens`` tokens were produced or the context is full. EOS and
stop tokens stay in the token list (as Hugging Face and vLLM keep them) but add no text; a stop string and what
follows it are cut from the text (OpenAI semantics).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from serve.sampling import SamplingParams, TokenLogprobs
from serve.text import IncrementalDetokenizer, StopStringMatcher
from specs.errors import ConfigError


class SequenceState:
    """What one sequence has produced so far. ``push`` adds a token and returns the text it releases."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, *, tokenizer: Any = None,
                 eos_ids: Collection[int] = ()):
        if params.stop and tokenizer is None:
            raise ConfigError("stop", "stop strings need a tokenizer to turn tokens into text")
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(() if params.ignore_eos else eos_ids)
        self.stop_ids = frozenset(params.stop_token_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprobs] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids) if tokenizer is not None else None
        self._stops = StopStringMatcher(params.stop)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int, logprobs: TokenLogprobs | None = None) -> str:
        """Record one generated token; return the text now safe to emit (may be '')."""
        if self.finished:
            raise RuntimeError("push() on a finished sequence")
        token_id = int(token_id)
        self.output_ids.append(token_id)
        if logprobs is not None:
            self.logprobs.append(logprobs)
        delta = ""
        if token_id in self.eos_ids or token_id in self.stop_ids:
            self.finish_reason, self.stop_reason = "stop", token_id
        elif self._detok is not None:
            delta = self._stops.push(self._detok.push(token_id))
            if self._stops.stopped is not None:
                self.finish_reason, self.stop_reason = "stop", self._stops.stopped
        if not self.finished and len(self.output_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        if self.finished and self._stops.stopped is None:
            delta += self._release()
        self.text += delta
        return delta

    def finish_length(self) -> str:
        """End early because the context is full; return any held-back text."""
        return self._finish("length")

    def finish_stop(self) -> str:
        """End because the output is complete (a structured output's grammar has ended); return held-back text."""
        return self._finish("stop")

    def _finish(self, reason: str) -> str:
        if self.finished:
            return ""
        self.finish_reason = reason
        delta = self._release()
        self.text += delta
        return delta

    def _release(self) -> str:
        """At the end: flush text held back for a partial character or a possible stop string. The flushed
        characters can still complete a stop string, which then becomes the finish reason."""
        if self._detok is None:
            return ""
        delta = self._stops.push(self._detok.flush())
        if self._stops.stopped is not None:
            self.finish_reason, self.stop_reason = "stop", self._stops.stopped
            return delta
        return delta + self._stops.flush()
