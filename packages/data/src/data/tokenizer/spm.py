"""SentencePiece tokenizers (Kudo & Richardson 2018, "SentencePiece: A simple and language independent subword
tokenizer and detokenizer for Neural Text Processing"): load a ``.model`` file, or train one locally.

Llama 1/2, T5 and Mistral ship ``tokenizer.model`` files of this kind. Offsets come from the SentencePieceText
proto (byte spans into the input), converted to character spans.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from data.tokenizer.base import BaseTokenizer, char_offsets_from_bytes, check_texts
from specs.errors import ConfigError


class SentencePieceTokenizer(BaseTokenizer):
    """A ``sentencepiece.SentencePieceProcessor``; bos/eos/pad come from the model (-1 there means None)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, *, spec: str, chat_template: str | None = None) -> None:
        import sentencepiece as spm

        super().__init__(spec=spec, chat_template=chat_template)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as exc:
            raise ConfigError("tokenizer", f"{spec} is not a sentencepiece model: {exc}") from None
        self._proto = model_proto
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id = (i if i >= 0 else None
                                                 for i in (self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()))

    @classmethod
    def from_file(cls, path: str | Path, *, spec: str | None = None, chat_template: str | None = None,
                  **_: Any) -> SentencePieceTokenizer:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("tokenizer", f"sentencepiece model {p} does not exist")
        return cls(p.read_bytes(), spec=spec or str(p), chat_template=chat_template)

    def _encode_raw(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            return self._sp.decode(ids)
        # sentencepiece always drops control symbols; keep them as their piece text between decoded runs.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if self._sp.is_control(i):
                parts.append(self._sp.decode(run))
                parts.append(self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        parts.append(self._sp.decode(run))
        return "".join(parts)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        proto = self._sp.encode(text, out_type="proto")
        ids = [p.id for p in proto.pieces]
        return ids, char_offsets_from_bytes(text, [(p.begin, p.end) for p in proto.pieces])

    def id_to_token(self, token_id: int) -> str | None:
        return self._sp.id_to_piece(int(token_id)) if 0 <= token_id < self.vocab_size else None

    def token_to_id(self, token: str) -> int | None:
        tid = self._sp.piece_to_id(token)
        return None if tid == self._sp.unk_id() and token != self._sp.id_to_piece(tid) else tid

    def _definition(self) -> bytes:
        return self._proto

    def _save_model(self, directory: Path) -> None:
        (directory / "tokenizer.model").write_bytes(self._proto)


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int = 8000, model_type: str = "bpe",
                        spec: str | None = None, chat_template: str | None = None,
                        **options: Any) -> SentencePieceTokenizer:
    """Train a sentencepiece model in memory (byte fallback on, identity normalisation so text round-trips).

    ``options`` go to ``SentencePieceTrainer.train`` (e.g. ``character_coverage``, ``user_defined_symbols``).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    settings: dict[str, Any] = dict(model_type=model_type, vocab_size=vocab_size, byte_fallback=True,
                                    normalization_rule_name="identity", remove_extra_whitespaces=False,
                                    split_digits=True, pad_id=3, unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
                                    num_threads=1)  # one thread: the learned pieces do not depend on scheduling
    settings.update(options)
    docs = check_texts(texts)
    refused: list[ConfigError] = []  # sentencepiece turns an error raised by the iterator into a RuntimeError

    def sentences() -> Iterator[str]:
        try:
            yield from docs
        except ConfigError as exc:
            refused.append(exc)
            raise

    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_writer=buf, **settings)
    except RuntimeError as exc:
        if refused:
            raise refused[0] from None
        raise ConfigError("tokenizer", f"sentencepiece training failed: {exc}") from None
    return SentencePieceTokenizer(buf.getvalue(), spec=spec or f"sentencepiece:{vocab_size}",
                                  chat_template=chat_template)
