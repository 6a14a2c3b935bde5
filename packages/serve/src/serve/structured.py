"""Structured outputs: decoding constrained to a JSON Schema, a regular expression, a choice of strings or an EBNF
grammar, through XGrammar (Dong et al. 2024, arXiv:2411.15100; vLLM's and SGLang's default backend).

Each constrained request has a grammar matcher. Before a step samples, the matcher writes the set of tokens that
keep the output a prefix of the language into a bitmask; the other logits become -inf (after penalties, before
temperature and truncation, so greedy and sampled decoding both stay inside the language; logprobs report the
model's own distribution, as vLLM's do). After the step the matcher accepts the chosen token. When the output is
complete only the end-of-sequence tokens remain allowed, so the request stops with ``finish_reason: stop``; a
request that runs out of ``max_tokens`` first ends with the prefix it has (``length``), as OpenAI's and vLLM's do.

The vocabulary is read from the tokenizer's ``id_to_token`` spellings: byte-level BPE (GPT-2, Llama 3: ``Ġ``),
SentencePiece with byte fallback (Llama 2, Mistral, lmstack's byte tokenizer: ``▁`` and ``<0x0A>``) or raw
strings. Special tokens (those the tokenizer drops from decoded text) are never allowed inside an output.
Grammars are compiled once per distinct request and cached. The masks are host work: the engine fills them
after it has launched a step's forward, while the device computes (vLLM's and SGLang's overlap), and applies them
to the logits when they arrive.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from serve.sampling import StructuredOutput
from specs.errors import ConfigError, LmstackError

_SOURCE = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # XGrammar's "[time] file.cc:line: " prefix
FIELD = "response_format"  # the request field errors name (structured_outputs' kinds map onto it too)


def _xgr() -> Any:
    try:
        import xgrammar
    except ImportError:
        raise ConfigError(FIELD, "structured outputs need XGrammar: pip install 'lmstack-serve[structured]' "
                                 "(xgrammar)") from None
    return xgrammar


def vocabulary(tokenizer: Any) -> tuple[list[str], str]:
    """(each id's spelling, XGrammar vocab type name) for a specs Tokenizer with ``id_to_token``."""
    n = int(tokenizer.vocab_size)
    spell = [tokenizer.id_to_token(i) for i in range(n)]
    special = {int(t) for t in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if t is not None}
    for i, s in enumerate(spell):  # a token the tokenizer drops from text is special: empty, never inside output
        if s is None or i in special or (s and not tokenizer.decode([i], skip_special_tokens=True)):
            spell[i] = ""
    words = [s for s in spell if s]
    if any(s.startswith("<0x") and len(s) == 6 and s.endswith(">") for s in words) or \
            sum(s.startswith("\u2581") for s in words) > len(words) // 10:
        kind = "BYTE_FALLBACK"
    elif sum(("\u0120" in s) or ("\u010a" in s) for s in words) > len(words) // 100:
        kind = "BYTE_LEVEL"
    else:
        kind = "RAW"
    return [s or "" for s in spell], kind


class GrammarBackend:
    """XGrammar's compiler over one tokenizer and the model's (possibly padded) vocabulary size."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]):
        xgr = _xgr()
        vocab, kind = vocabulary(tokenizer)
        self.vocab_size = int(vocab_size)
        self.info = xgr.TokenizerInfo(vocab, getattr(xgr.VocabType, kind), vocab_size=self.vocab_size,
                                      stop_token_ids=[int(t) for t in eos_ids])
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self._lock = threading.Lock()  # submit() runs on request threads
        self._compile = lru_cache(maxsize=256)(self._compile_uncached)

    def _compile_uncached(self, spec: StructuredOutput) -> Any:
        xgr = _xgr()
        try:
            if spec.json:
                return self.compiler.compile_json_schema(spec.json, any_whitespace=spec.whitespace, strict_mode=True)
            if spec.regex:
                return self.compiler.compile_regex(spec.regex)
            if spec.choice:
                return self.compiler.compile_grammar(
                    "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice))
            return self.compiler.compile_grammar(spec.grammar or "")
        except (RuntimeError, ValueError, xgr.InvalidJSONError) as exc:
            what = "JSON Schema" if spec.json else "regular expression" if spec.regex else "grammar"
            why = _SOURCE.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise ConfigError(FIELD, f"the {what} does not compile: {why}") from None

    def matcher(self, spec: StructuredOutput) -> Any:
        """A fresh matcher for one request (compiles ``spec`` on first use; ConfigError when it does not)."""
        with self._lock:
            compiled = self._compile(spec)
        return _xgr().GrammarMatcher(compiled)

    def fill(self, matchers: Sequence[Any | None]) -> tuple[list[int], torch.Tensor] | None:
        """(rows with a matcher, their next-token bitmask) on the host, or None when no row has one. The engine
        calls this after it launched a step's forward, so the host fills while the GPU computes (vLLM's
        overlap); one matcher after another: XGrammar's threaded batch fill ran 2.3x slower here (benchmarks.md)."""
        rows = [b for b, m in enumerate(matchers) if m is not None and not m.is_terminated()]  # finished: no mask
        if not rows:
            return None
        bitmask = _xgr().allocate_token_bitmask(len(rows), self.vocab_size)
        for i, b in enumerate(rows):
            matchers[b].fill_next_token_bitmask(bitmask, i)
        return rows, bitmask

    @staticmethod
    def apply(logits_BV: torch.Tensor, masks: tuple[list[int], torch.Tensor]) -> torch.Tensor:
        """``logits_BV`` (a copy) with every token a row's bitmask forbids at -inf; other rows unchanged."""
        rows, bitmask = masks
        sub = logits_BV[rows].float()  # a copy: the raw logits stay for logprobs
        _xgr().apply_token_bitmask_inplace(sub, bitmask.to(logits_BV.device, non_blocking=True))
        out = logits_BV.clone()
        out[rows] = sub.to(logits_BV.dtype)
        return out


def check_accepted(matcher: Any, token: int, where: str) -> None:
    """Advance ``matcher`` by the sampled token. A token outside the grammar means it allowed none (a complete
    output with no end-of-sequence token to end it with): an LmstackError saying so, never silent."""
    if not matcher.accept_token(int(token)):
        raise LmstackError(f"{where}: its structured output allows no further token and the model has no "
                           "end-of-sequence token to end it with")
