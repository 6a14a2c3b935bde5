"""The shared base of lmstack tokenizers: special ids, batch encode, offsets, chat templates, save/fingerprint.

Every concrete tokenizer (:class:`~data.tokenizer.hf.HFTokenizer` over Hugging Face ``tokenizers``,
:class:`~data.tokenizer.spm.SentencePieceTokenizer`, :class:`~data.tokenizer.byte.ByteTokenizer`) implements
``specs.protocols.Tokenizer``. A saved tokenizer is a directory in the Hugging Face layout: the model file
(``tokenizer.json`` or ``tokenizer.model``) beside ``tokenizer_config.json``, which carries ``bos_token``,
``eos_token``, ``pad_token`` and ``chat_template`` exactly as ``transformers`` writes them, plus an ``lmstack``
section naming the kind. ``load_tokenizer(dir)`` reads it back; ``transformers.AutoTokenizer`` reads the HF kind.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from data.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from specs.errors import ConfigError

CONFIG_FILE = "tokenizer_config.json"
# the model files a tokenizer directory is loaded from, in the order data.tokenizer.loading looks for them
MODEL_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def check_texts(texts: Any, name: str = "texts") -> Iterator[str]:
    """``texts`` (an iterable of documents) as an iterator that checks each document is a str as it is read.

    A single str or bytes is refused up front (iterating it would make every character a document), as is a
    non-iterable; a non-str document raises when it is reached. ``name`` is the field path in the ConfigError.
    """
    if isinstance(texts, (str, bytes, bytearray)):
        raise ConfigError(name, f"expected an iterable of documents (each a str), got a single "
                          f"{type(texts).__name__} of length {len(texts)}; pass a list of documents, e.g. [text]")
    if not isinstance(texts, Iterable):
        raise ConfigError(name, f"expected an iterable of documents (each a str), got {type(texts).__name__}")
    return _each_str(texts, name)


def _each_str(texts: Iterable[Any], name: str) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(name, f"document {i} is of type {type(text).__name__}, expected a str")
        yield text


def check_paths(files: Any, name: str = "files") -> list[str | os.PathLike[str]]:
    """``files`` as a list of paths; a single path is refused (a str would be read one character per path)."""
    if isinstance(files, (str, bytes, os.PathLike)):
        raise ConfigError(name, f"expected a list of text-file paths, got the single path {files!r}; "
                          f"pass a list, e.g. [{os.fsdecode(files)!r}]")
    if not isinstance(files, Iterable):
        raise ConfigError(name, f"expected a list of text-file paths, got {type(files).__name__}")
    return list(files)


class BaseTokenizer(abc.ABC):
    """Common behaviour; subclasses provide the vocabulary, raw encode/decode and their definition bytes."""

    kind: str = ""
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def __init__(self, *, spec: str, chat_template: str | None = None) -> None:
        self.spec = spec  # how the tokenizer was asked for ('byte', 'bpe:8000', a path); recorded in manifests
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE

    # ---- what subclasses implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_raw(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without bos/eos."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens=False``."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no bos/eos) and, for each, the ``(start, end)`` character span of ``text`` it covers."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str | None: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abc.abstractmethod
    def _definition(self) -> bytes:
        """The serialised definition whose sha256 is the fingerprint (what decides the ids)."""

    @abc.abstractmethod
    def _save_model(self, directory: Path) -> None:
        """Write the model file(s) into ``directory``."""

    # ---- Protocol --------------------------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` as plain text: a special token's spelling inside it (``<|eos|>``) is not special
        (tiktoken's ``encode_ordinary``); use ``add_bos``/``add_eos`` or ``apply_chat_template`` for specials."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Ids of each text in ``texts`` (a list of str; a single str is an error, use ``encode`` for one)."""
        out = self._encode_raw(list(check_texts(texts)))
        if add_bos or add_eos:
            head = [self._need("bos_id")] if add_bos else []
            tail = [self._need("eos_id")] if add_eos else []
            out = [head + ids + tail for ids in out]
        return out

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.kind.encode() + b"\0")
        h.update(json.dumps(self.special_ids(), sort_keys=True).encode() + b"\0")
        h.update(self._definition())
        return h.hexdigest()

    # ---- helpers ---------------------------------------------------------------------------------------------
    def special_ids(self) -> dict[str, int | None]:
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id}

    def _need(self, attr: str) -> int:
        from specs.errors import ConfigError

        value = getattr(self, attr)
        if value is None:
            raise ConfigError("tokenizer", f"{self.spec!r} has no {attr.removesuffix('_id')} token")
        return value

    def _token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.id_to_token(token_id)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                            tokenize: bool = False, chat_template: str | None = None, **kwargs: Any) -> Any:
        """Render ``messages`` ([{"role": ..., "content": ...}]) with the Jinja chat template.

        Returns the prompt string, or its ids with ``tokenize=True`` (special tokens in the text, such as
        ``<|im_start|>``, become their ids when the vocabulary has them). Rendering matches
        ``transformers``' ``apply_chat_template(..., tokenize=False)`` for the same template.
        """
        text = render_chat(chat_template or self.chat_template, messages,
                           add_generation_prompt=add_generation_prompt,
                           bos_token=self._token_text(self.bos_id) or "", eos_token=self._token_text(self.eos_id) or "",
                           pad_token=self._token_text(self.pad_id) or "", **kwargs)
        return self.encode_chat_text(text) if tokenize else text

    def encode_chat_text(self, text: str) -> list[int]:
        """Encode a rendered chat prompt (subclasses that know special tokens in text override this)."""
        return self.encode(text)

    def hf_config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` contents (HF keys plus an ``lmstack`` section)."""
        return {
            "bos_token": self._token_text(self.bos_id),
            "eos_token": self._token_text(self.eos_id),
            "pad_token": self._token_text(self.pad_id),
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "lmstack": {"kind": self.kind, "spec": self.spec, "vocab_size": self.vocab_size,
                        "fingerprint": self.fingerprint(), **self.special_ids()},
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the tokenizer's files into ``directory`` (created if missing) and return it. As transformers'
        ``save_pretrained``, other files there stay (a checkpoint's weights, its model card); another tokenizer's
        model file there (``MODEL_FILES``) is removed, so the directory loads as this tokenizer. The files are
        written to a temporary directory first and renamed into place, so an error while writing them changes
        nothing."""
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise ConfigError("tokenizer", f"cannot save into {target}: it exists and is not a directory")
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=target))
        try:
            self._save_model(tmp)
            (tmp / CONFIG_FILE).write_text(json.dumps(self.hf_config(), indent=2, sort_keys=True) + "\n")
            written = {p.name for p in tmp.iterdir()}
            for name in MODEL_FILES:
                if name not in written and (target / name).is_file():
                    (target / name).unlink()
            for name in sorted(written - {CONFIG_FILE}) + [CONFIG_FILE]:  # the config, which names the kind, last
                os.replace(tmp / name, target / name)
        finally:
            _rmtree(tmp)
        return target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, vocab_size={self.vocab_size})"


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def char_offsets_from_bytes(text: str, byte_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Map UTF-8 byte spans of ``text`` to character spans (a byte inside a character maps to that character)."""
    import numpy as np

    raw = text.encode("utf-8")
    # char_of_byte[b] = index of the character that byte b belongs to; one extra slot for the end position.
    starts = np.frombuffer(raw, dtype=np.uint8) & 0xC0 != 0x80
    char_of_byte = np.concatenate([np.cumsum(starts) - 1, [len(text)]]) if raw else np.array([0])
    out = []
    for b0, b1 in byte_spans:
        c0 = int(char_of_byte[min(b0, len(raw))])
        c1 = int(char_of_byte[b1 - 1]) + 1 if b1 > b0 else c0
        out.append((c0, c1))
    return out
