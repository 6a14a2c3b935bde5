"""Unpaired preference data for KTO: single completions labelled desirable or not, in JSONL (TRL's unpaired
preference formats; the ``lmstack.datasets`` plugin ``unpaired``: ``data.dataset: unpaired``).

Each line of a ``.jsonl`` file is one of:

    {"prompt": "text", "completion": "text", "label": true}                      standard
    {"prompt": [messages], "completion": [messages], "label": false}            conversational
    {"prompt_ids": [ints], "completion_ids": [ints], "label": true}             tokenized already

or a preference pair (:mod:`rl.data`'s formats), which counts as two examples, its chosen completion desirable and
its rejected one not (TRL's ``unpair_preference_dataset``). Tokenized as :func:`rl.data.tokenize_pair` tokenizes a
pair's completion (TRL's KTO: the EOS ends a text completion).

KTO estimates the KL term from mismatched pairs (Ethayarajh et al. 2024, arXiv:2402.01306), so a batch of ``n``
examples has ``2n`` rows in pairs: row ``2i`` is example ``i``'s prompt + completion, row ``2i + 1`` its prompt with
example ``i - 1``'s completion (cyclically, TRL's rotation of completions by one within a batch). ``advantages``
carries each example's label at its completion tokens: +1 desirable, -1 undesirable, 0 on the KL rows. Truncation,
padding and targets are the preference loader's; an example whose prompt leaves it no target is dropped at build.
``data.batch_size`` counts examples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from rl.data import (
    EpochLoader,
    _messages,
    _record,
    _row,
    check_builder_args,
    json_line,
    padded,
    read_jsonl,
    split_indices,
    token_ids,
    tokenize_pair,
)
from specs.batch import IGNORE_INDEX, Batch
from specs.errors import ConfigError

logger = logging.getLogger("rl.unpaired")
FORMATS = ('{"prompt", "completion", "label"} (text or message lists), {"prompt_ids", "completion_ids", "label"}, '
           'or a preference pair')
Example = tuple[list[int], list[int], bool]  # prompt ids, completion ids, desirable


def read_unpaired(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every line of ``path``; a preference pair's record keeps its chosen/rejected keys."""
    return read_jsonl(path, _unpaired_record, "labelled completions", FORMATS)


def _unpaired_record(line: str, where: str) -> dict[str, Any]:
    doc = json_line(line, where)
    if isinstance(doc, Mapping) and "chosen" in doc and "rejected" in doc:
        return _record(line, where)
    if not isinstance(doc, Mapping) or "label" not in doc:
        got = sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__
        raise ConfigError("data.path", f"{where}: expected {FORMATS}; got {got}")
    if not isinstance(doc["label"], bool):
        raise ConfigError("data.path", f"{where}: label must be true or false, got {doc['label']!r}")
    if "prompt_ids" in doc or "completion_ids" in doc:
        return {"prompt_ids": token_ids(doc, "prompt_ids", where, nonempty=False),
                "completion_ids": token_ids(doc, "completion_ids", where, nonempty=True), "label": doc["label"]}
    prompt, completion = doc.get("prompt"), doc.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion:
            raise ConfigError("data.path", f"{where}: completion must not be empty")
        return {"prompt": prompt, "completion": completion, "label": doc["label"]}
    if isinstance(prompt, str) or isinstance(completion, str):
        raise ConfigError("data.path", f"{where}: prompt and completion must both be text or both message lists")
    prompt, completion = _messages(prompt, where, "prompt"), _messages(completion, where, "completion")
    if completion[0]["role"] != "assistant":
        raise ConfigError("data.path", f"{where}: the completion must start with an assistant message, got "
                                       f"{completion[0]['role']!r}")
    return {"prompt": prompt, "completion": completion, "label": doc["label"]}


def tokenize_examples(tokenizer: Any, record: Mapping[str, Any]) -> list[Example]:
    """The examples of a record from :func:`read_unpaired`: one, or two for a preference pair."""
    if "chosen" in record or "chosen_ids" in record:
        prompt, chosen, rejected = tokenize_pair(tokenizer, record)
        return [(prompt, chosen, True), (prompt, rejected, False)]
    if "prompt_ids" in record:
        return [(list(record["prompt_ids"]), list(record["completion_ids"]), record["label"])]
    # as a pair whose two completions are the same one
    prompt, completion, _ = tokenize_pair(tokenizer, {"prompt": record["prompt"], "chosen": record["completion"],
                                                      "rejected": record["completion"]})
    return [(prompt, completion, record["label"])]


class UnpairedLoader(EpochLoader):
    """Iterable of Batch (``input_ids``, ``labels``, ``attention_mask``, ``advantages``; each example's row then
    its KL row); build it with :func:`build_unpaired_dataloader`."""

    paired = True  # rows come in pairs (an example, its KL row): micro-batches and ranks must not split them
    kind, unit = "unpaired", "examples"

    def __init__(self, examples: list[Example], tokenizer: Any, *, seq_len: int, **kw: Any):
        self.seq_len = seq_len
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        super().__init__(examples, tokenizer, **kw)

    def _make(self, examples: list[Example]) -> Batch:
        rows, signs = [], []
        for i, (prompt, completion, desirable) in enumerate(examples):
            rows += [_row(prompt, completion, self.seq_len), _row(prompt, examples[i - 1][1], self.seq_len)]
            signs += [1.0 if desirable else -1.0, 0.0]
        ids, labels, mask = padded(rows, self.seq_len, self.pad_id)
        adv = torch.where(labels != IGNORE_INDEX, torch.tensor(signs)[:, None], 0.0)
        return Batch(input_ids=ids, labels=labels, attention_mask=mask, advantages=adv)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "seq_len": self.seq_len}


def build_unpaired_dataloader(path: str | os.PathLike[str], batch_size: int = 8, seq_len: int = 1024, *,
                              seed: int = 0, shuffle: bool = True, rank: int | None = None,
                              world_size: int | None = None, num_workers: int = 0, pack: bool = False,
                              doc_mask: bool = False, drop_last: bool = True, epochs: int | None = 1,
                              tokenizer: Any = None, val_fraction: float = 0.0, split: str = "train",
                              **_: Any) -> UnpairedLoader:
    """An :class:`UnpairedLoader` over the examples in ``path`` (see the module docstring), ``batch_size`` examples
    a batch (at least 2: the KL rows pair each prompt with another example's completion); the other arguments as
    :func:`rl.data.build_preference_dataloader`'s."""
    tok = check_builder_args(batch_size, seq_len, seed, split, val_fraction, tokenizer, pack or doc_mask,
                             "unpaired examples are one completion a row (padded)")
    if batch_size < 2:
        raise ConfigError("data.batch_size", "KTO's KL rows pair each prompt with another example's completion in "
                                             f"the batch: at least 2 examples, got {batch_size}")
    records = read_unpaired(path)
    chat = [where for where, r in records if "prompt" in r and not isinstance(r["prompt"], str)]
    if chat and not hasattr(tok, "apply_chat_template"):
        raise ConfigError("data.tokenizer", f"{chat[0]}: conversational examples need a tokenizer with a chat "
                                            "template (apply_chat_template)")
    examples, dropped = [], 0
    for _, record in records:
        for ex in tokenize_examples(tok, record):
            if min(len(ex[0]) + len(ex[1]), seq_len + 1) > max(len(ex[0]), 1):
                examples.append(ex)
            else:
                dropped += 1
    if dropped:
        logger.info("%s: %d examples dropped: their prompt fills data.seq_len=%d", path, dropped, seq_len)
    examples = [examples[i] for i in split_indices(len(examples), val_fraction, seed, split)]
    return UnpairedLoader(examples, tok, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle,
                          drop_last=drop_last, epochs=epochs, split=split, source=str(path))


build_unpaired_dataloader.paired = True  # type: ignore[attr-defined]  # train.run's preflight reads it
