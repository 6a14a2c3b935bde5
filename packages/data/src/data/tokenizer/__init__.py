"""Tokenizers implementing ``specs.protocols.Tokenizer``, and ``load_tokenizer(spec)`` to pick one.

- :class:`HFTokenizer` over Hugging Face ``tokenizers`` (``tokenizer.json``; :func:`train_bpe` for byte-level BPE)
- :class:`SentencePieceTokenizer` (``.model``; :func:`train_sentencepiece`)
- :class:`ByteTokenizer` (256 bytes + bos/eos/pad, no file)

All share :class:`BaseTokenizer`: ``encode``/``encode_batch``/``decode``, ``encode_with_offsets``,
``apply_chat_template``, ``save(dir)`` (read back by ``load_tokenizer(dir)``) and ``fingerprint()``.
"""

from data.tokenizer.base import BaseTokenizer
from data.tokenizer.byte import ByteTokenizer
from data.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from data.tokenizer.hf import HFTokenizer, train_bpe
from data.tokenizer.loading import find_in_hf_cache, hf_cache_roots, load_tokenizer
from data.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "DEFAULT_CHAT_TEMPLATE", "BaseTokenizer", "ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer",
    "find_in_hf_cache", "hf_cache_roots", "load_tokenizer", "render_chat", "train_bpe", "train_sentencepiece",
]
