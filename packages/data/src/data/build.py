"""Tokenize texts into a shard directory (the small path used by the embedded corpus, tests and examples).

``corpus`` runs the full curation pipeline (dedup, PII, licenses, quality) before it reaches the same
:class:`~data.shards.ShardWriter`; this module only tokenizes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from data.manifest import tokenizer_entry
from data.shards import ShardWriter
from data.tokenizer.base import check_texts
from data.tokenizer.loading import TRAINED_KINDS, load_tokenizer
from specs.errors import ConfigError


def _resolve_tokenizer(tokenizer: Any) -> Any:
    """A Tokenizer object as is, or the tokenizer a spec (``byte``, a path, a cached model name) loads.

    A trained spec (``bpe:N``, ``sentencepiece:N``) is refused: train it first with ``load_tokenizer(spec,
    texts=...)`` so the caller holds the tokenizer the shards were written with.
    """
    if tokenizer is None:
        raise ConfigError("tokenizer", "expected a Tokenizer or a spec such as 'byte' or a tokenizer path, got None")
    if isinstance(tokenizer, str) and tokenizer.strip().partition(":")[0] in TRAINED_KINDS:
        raise ConfigError("tokenizer", f"{tokenizer!r} names a tokenizer to train, which is not done here; train "
                          f"it first, tok = load_tokenizer({tokenizer!r}, texts=texts), then pass tok")
    return load_tokenizer(tokenizer)


def write_texts(writer: ShardWriter, texts: Iterable[str], tokenizer: Any, *, add_bos: bool = False,
                add_eos: bool = True, batch_size: int = 64) -> int:
    """Encode ``texts`` (an iterable of str documents) in batches and append them; ``encode_batch`` runs in
    parallel for HF tokenizers. ``tokenizer`` is a Tokenizer or a spec, as for :func:`build_shards`.

    ``add_eos`` appends the eos id after each document when the tokenizer has one. Returns documents written.
    """
    docs = check_texts(texts)
    tokenizer = _resolve_tokenizer(tokenizer)
    bos = add_bos and tokenizer.bos_id is not None
    eos = add_eos and tokenizer.eos_id is not None
    encode_np = getattr(tokenizer, "encode_np", None)
    n = 0
    while batch := list(itertools.islice(docs, batch_size)):
        if encode_np is not None and not bos and not eos:
            ids_list: list[Any] = [encode_np(t) for t in batch]
        else:
            ids_list = tokenizer.encode_batch(batch, add_bos=bos, add_eos=eos)
        for ids in ids_list:
            writer.add_document(ids)
        n += len(batch)
    return n


def build_shards(texts: Iterable[str], outdir: str | os.PathLike[str], tokenizer: Any, *,
                 shard_size_tokens: int = 1 << 20, sources: Iterable[Mapping[str, Any]] = (), add_bos: bool = False,
                 add_eos: bool = True, save_tokenizer: bool = True, overwrite: bool = False) -> Path:
    """Tokenize ``texts`` (an iterable of str documents, e.g. ``[text]``; a bare str is refused) into ``outdir``
    (atomic: on any error nothing is written). ``tokenizer`` is a Tokenizer or a spec that
    :func:`~data.tokenizer.load_tokenizer` loads without training (``byte``, a path, a cached model name). The
    tokenizer is saved to ``outdir/tokenizer`` when it can be."""
    docs = check_texts(texts)
    tokenizer = _resolve_tokenizer(tokenizer)
    bos = add_bos and tokenizer.bos_id is not None
    eos = add_eos and tokenizer.eos_id is not None
    entry = tokenizer_entry(tokenizer, path="tokenizer" if save_tokenizer and hasattr(tokenizer, "save") else None)
    writer = ShardWriter(outdir, vocab_size=tokenizer.vocab_size, tokenizer=entry, sources=sources,
                         shard_size_tokens=shard_size_tokens, separators={"bos": bos, "eos": eos},
                         overwrite=overwrite)
    with writer:
        write_texts(writer, docs, tokenizer, add_bos=bos, add_eos=eos)
        if entry["path"]:
            tokenizer.save(writer.staging / "tokenizer")
    return Path(outdir)
