"""Tokenizers from Hugging Face ``tokenizers``: load a ``tokenizer.json``, or train a byte-level BPE.

Byte-level BPE is GPT-2's scheme (Radford et al. 2019; Sennrich et al. 2016, "Neural Machine Translation of Rare
Words with Subword Units"): text is pre-split by the GPT-2 regex, mapped to bytes, and merges are learned over
byte pairs, so any string encodes with no unknown token. Training runs in Rust and takes seconds on MBs of text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data.tokenizer.base import BaseTokenizer, check_paths, check_texts
from specs.errors import ConfigError

# Specials of a trained BPE: bos/eos/pad plus ChatML markers so the default chat template maps to single ids.
BPE_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
_BOS_NAMES = ("<|bos|>", "<s>", "<|begin_of_text|>", "<bos>", "[CLS]", "<|endoftext|>")
_EOS_NAMES = ("<|eos|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]", "<|endoftext|>")
_PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")


class HFTokenizer(BaseTokenizer):
    """A ``tokenizers.Tokenizer`` with lmstack's special-id and chat-template handling."""

    kind = "hf"

    def __init__(self, tokenizer: Any, *, spec: str, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None) -> None:
        super().__init__(spec=spec, chat_template=chat_template)
        self._tok = tokenizer  # the definition: saved, fingerprinted, recognises special tokens in text
        self._plain = tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True  # encode(): '<|eos|>' written in a document is just text
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._special(bos_token, _BOS_NAMES)
        self.eos_id = self._special(eos_token, _EOS_NAMES)
        self.pad_id = self._special(pad_token, _PAD_NAMES)

    def _special(self, given: str | None, names: Sequence[str]) -> int | None:
        if given is not None:
            tid = self._tok.token_to_id(given)
            if tid is None:
                raise ConfigError("tokenizer", f"special token {given!r} is not in the vocabulary of {self.spec!r}")
            return tid
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        for name in names:
            if name in added:
                return self._tok.token_to_id(name)
        return None

    @classmethod
    def from_file(cls, path: str | Path, *, spec: str | None = None, config: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> HFTokenizer:
        """Load ``tokenizer.json``; ``config`` is a ``tokenizer_config.json`` dict (special tokens, chat template)."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ConfigError("tokenizer", f"{path} is not a Hugging Face tokenizer.json: {exc}") from None
        cfg = dict(config or {})
        for key in ("bos_token", "eos_token", "pad_token"):
            kwargs.setdefault(key, _token_content(cfg.get(key)))
        kwargs.setdefault("chat_template", _chat_template(cfg.get("chat_template")))
        return cls(tok, spec=spec or str(path), **kwargs)

    # ---- encode / decode -------------------------------------------------------------------------------------
    def _encode_raw(self, texts: Sequence[str]) -> list[list[int]]:
        # add_special_tokens=False: a post-processor (e.g. Llama's BOS) must not fight add_bos/add_eos.
        return [e.ids for e in self._plain.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_chat_text(self, text: str) -> list[int]:
        """Encode a rendered template: here special tokens written in the text (<|im_start|>) become their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._plain.encode(text, add_special_tokens=False)  # the Python binding reports character offsets
        return enc.ids, [tuple(o) for o in enc.offsets]

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def _definition(self) -> bytes:
        return _canonical_json(self._tok.to_str())

    def _save_model(self, directory: Path) -> None:
        self._tok.save(str(directory / "tokenizer.json"))

    def hf_config(self) -> dict[str, Any]:
        cfg = super().hf_config()
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        return cfg


def train_bpe(texts: Iterable[str] | None = None, *, vocab_size: int = 8000, files: Sequence[str | Path] = (),
              min_frequency: int = 2, special_tokens: Sequence[str] = BPE_SPECIALS, spec: str | None = None,
              chat_template: str | None = None) -> HFTokenizer:
    """Train a GPT-2-style byte-level BPE on ``texts`` and/or ``files`` (plain UTF-8 text files).

    ``vocab_size`` counts the 256 byte symbols and the special tokens. Deterministic for the same input.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    n_min = 256 + len(special_tokens)
    if vocab_size < n_min:
        raise ConfigError("tokenizer", f"bpe vocab_size must be >= {n_min} (256 bytes + specials), got {vocab_size}")
    if texts is None and not files:
        raise ConfigError("tokenizer", f"bpe:{vocab_size} trains on text, but no training text was given "
                          "(pass texts= or files=, or use 'byte' or a tokenizer.json path)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if texts is not None and files:
        raise ConfigError("tokenizer", "pass either texts= or files= to train_bpe, not both")
    docs = check_texts(texts) if texts is not None else None
    files = check_paths(files)
    if files:
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            raise ConfigError("tokenizer", f"bpe training files not found: {', '.join(missing)}")
        tok.train([str(f) for f in files], trainer)
    else:
        tok.train_from_iterator(docs, trainer)
    role = {name: name if name in special_tokens else None for name in ("<|bos|>", "<|eos|>", "<|pad|>")}
    return HFTokenizer(tok, spec=spec or f"bpe:{vocab_size}", bos_token=role["<|bos|>"], eos_token=role["<|eos|>"],
                       pad_token=role["<|pad|>"], chat_template=chat_template)


def _token_content(value: Any) -> str | None:
    """``tokenizer_config.json`` spells a token as a string or an AddedToken dict with ``content``."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(value: Any) -> str | None:
    """A template string, or HF's list form [{"name": "default", "template": ...}, ...]."""
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


def _canonical_json(text: str) -> bytes:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

