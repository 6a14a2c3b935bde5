"""Streaming text: incremental detokenization and stop strings.

:class:`IncrementalDetokenizer` turns a growing list of token ids into text deltas without re-decoding the whole
sequence each step, using the prefix/read-offset window of Hugging Face text-generation-inference and vLLM: decode
a few tokens of left context plus the new ones and emit only the new suffix, holding back text that ends in an
incomplete UTF-8 sequence (U+FFFD) until the next token completes it.

:class:`StopStringMatcher` finds stop strings across token boundaries. Text that could still be the start of a
stop string is held back from the stream; on a match, the text is cut before the stop string (OpenAI semantics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_WINDOW = 5  # tokens of left context re-decoded with each new token (TGI and vLLM use 5)


class IncrementalDetokenizer:
    """Text deltas of a growing token list. ``tokenizer`` follows specs.protocols.Tokenizer (``decode``)."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Left context from the prompt so the first generated token decodes as it would mid-sentence.
        self.ids: list[int] = list(prompt_ids[-_WINDOW:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a multi-byte character is still partial)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end of a sequence: whatever is still held back (a trailing partial character decodes as U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta


class StopStringMatcher:
    """Feed text deltas; get back the text safe to emit and whether a stop string was hit."""

    def __init__(self, stop: Sequence[str]):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = tuple(stop)
        self._held = ""  # text not yet emitted because it may be the start of a stop string
        self.stopped: str | None = None  # the stop string that matched

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def push(self, delta: str) -> str:
        """Return the part of the text so far that can be emitted now."""
        if self.stopped is not None:
            return ""
        text = self._held + delta
        if not self.stop:
            self._held = ""
            return text
        hits = [(i, s) for s in self.stop if (i := text.find(s)) >= 0]
        if hits:
            i, s = min(hits)
            self.stopped = s
            self._held = ""
            return text[:i]
        keep = self._holdback(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of generation without a stop string: release what was held back."""
        out, self._held = ("", "") if self.stopped is not None else (self._held, "")
        return out
