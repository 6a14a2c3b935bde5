"""A byte-level tokenizer that needs no file: ids 0-255 are UTF-8 bytes, then bos, eos and pad.

The fallback every machine has (ByT5, Xue et al. 2022, "ByT5: Towards a token-free future with pre-trained
byte-to-byte models", uses the same idea with its specials first). Decoding joins the bytes and replaces
invalid UTF-8 with U+FFFD, so any id sequence decodes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.tokenizer.base import BaseTokenizer

SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")


class ByteTokenizer(BaseTokenizer):
    """256 byte ids + ``<|bos|>`` (256), ``<|eos|>`` (257), ``<|pad|>`` (258): vocab_size 259."""

    kind = "byte"

    def __init__(self, *, spec: str = "byte", chat_template: str | None = None) -> None:
        super().__init__(spec=spec, chat_template=chat_template)
        self.vocab_size = 256 + len(SPECIALS)
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258

    def _encode_raw(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_np(self, text: str) -> np.ndarray:
        """(N,) uint8 ids without a per-token Python loop (used by the embedded-corpus builder)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            if skip_special_tokens and 256 <= i < self.vocab_size:
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append(self.id_to_token(i) or "\ufffd")
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for ci, ch in enumerate(text):
            b = ch.encode("utf-8")
            ids.extend(b)
            offsets.extend([(ci, ci + 1)] * len(b))
        return ids, offsets

    def id_to_token(self, token_id: int) -> str | None:
        if 0 <= token_id < 256:
            return f"<0x{token_id:02X}>"  # sentencepiece's byte-fallback spelling
        if 256 <= token_id < self.vocab_size:
            return SPECIALS[token_id - 256]
        return None

    def token_to_id(self, token: str) -> int | None:
        if token in SPECIALS:
            return 256 + SPECIALS.index(token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return int(token[3:5], 16)
            except ValueError:
                return None
        return None

    def _definition(self) -> bytes:
        return json.dumps({"bytes": 256, "specials": list(SPECIALS), "encoding": "utf-8"}, sort_keys=True).encode()

    def _save_model(self, directory: Path) -> None:
        pass  # fully described by tokenizer_config.json's lmstack section
