"""Preference data: pairs of a chosen and a rejected completion of one prompt, in JSONL (TRL's preference formats),
tokenized into paired batches (the ``lmstack.datasets`` plugin ``preference``: ``data.dataset: preference``).

Each line of a ``.jsonl`` file (``data.path``: one file, or a directory of them, read in name order) is one of:

    {"prompt": "text", "chosen": "text", "rejected": "text"}                      standard
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}          conversational
    {"chosen": [messages], "rejected": [messages]}                                conversational, implicit prompt
    {"prompt_ids": [ints], "chosen_ids": [ints], "rejected_ids": [ints]}          tokenized already

with messages ``{"role": "system" | "user" | "assistant" | "tool", "content": "..."}``. As TRL tokenizes them:
text is ``encode(prompt)`` for the prompt and ``encode(prompt + completion)`` cut after the prompt's tokens for
the completion, which ends with the tokenizer's EOS; the prompt starts with its BOS where it has one other than
its EOS (as Llama's and Mistral's tokenizers add one and GPT-2's does not);
conversations are rendered by the tokenizer's chat template, the prompt with the generation prompt, so a
completion ends with the template's end-of-turn. An implicit prompt is the messages both share before they differ.

Rows come in pairs, chosen then rejected: row ``2i`` is pair ``i``'s prompt + chosen, ``2i + 1`` its prompt +
rejected, each ``seq_len`` input tokens at most (TRL's ``keep_start`` truncation of ``max_length = seq_len + 1``),
right-padded to the batch's longest row rounded up to a multiple of 8 (padding: ``attention_mask`` 0, labels
-100). Only completion tokens are targets. A pair whose prompt leaves either completion no target is dropped at
build, as TRL drops it, and the count logged. ``data.batch_size`` counts pairs, so a batch has twice as many rows.
Pairs are shuffled per epoch from ``seed``; ``val_fraction`` holds out a seeded share of them (``split="val"``).
The position in the stream resumes exactly (``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from specs.batch import IGNORE_INDEX, Batch
from specs.errors import ConfigError
from specs.plugins import resolve

logger = logging.getLogger("rl.data")
STATE_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
FORMATS = ('{"prompt", "chosen", "rejected"} (text or message lists), {"chosen", "rejected"} (message lists) or '
           '{"prompt_ids", "chosen_ids", "rejected_ids"}')
Pair = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids


def read_jsonl(path: str | os.PathLike[str], parse: Callable[[str, str], dict[str, Any]], what: str,
               expected: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, ``parse(line, where)``) for every non-blank line of ``path`` (a .jsonl file, or a directory of them
    read in name order), ``where`` being ``file:line``; ConfigErrors name the path or the line."""
    root = Path(path)
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise ConfigError("data.path", f"{path}: no .jsonl {what} there; expected a .jsonl file (or a directory of "
                                       f"them) with one {expected} per line")
    out = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("data.path", f"{f}: cannot read it as UTF-8 text ({exc})") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                out.append((f"{f}:{n}", parse(line, f"{f}:{n}")))
    if not out:
        raise ConfigError("data.path", f"{path}: the .jsonl files hold no {what}")
    return out


def read_preferences(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every line of ``path`` (a .jsonl file or a directory of them), ``where`` being
    ``file:line``; each record is checked to be one of the formats above (ConfigError naming the line)."""
    return read_jsonl(path, _record, "preference pairs", FORMATS)


def json_line(line: str, where: str) -> Any:
    """A JSONL line's value; ConfigError naming ``where`` (``file:line``) when it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError("data.path", f"{where}: not valid JSON ({exc.msg})") from None


def token_ids(doc: Mapping[str, Any], key: str, where: str, *, nonempty: bool) -> list[int]:
    """``doc[key]`` as a list of token ids (integers >= 0, at least one with ``nonempty``), else a ConfigError."""
    v = doc.get(key)
    if not (isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)):
        raise ConfigError("data.path", f"{where}: {key} must be a list of token ids (integers >= 0)")
    if nonempty and not v:
        raise ConfigError("data.path", f"{where}: {key} is empty; a completion needs at least one token")
    return list(v)


def _record(line: str, where: str) -> dict[str, Any]:
    doc = json_line(line, where)
    if not isinstance(doc, Mapping):
        raise ConfigError("data.path", f"{where}: expected a JSON object, {FORMATS}; got {line[:80]!r}")
    if all(k in doc for k in ("prompt_ids", "chosen_ids", "rejected_ids")):
        return {k: token_ids(doc, k, where, nonempty=k != "prompt_ids")
                for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    if "chosen" not in doc or "rejected" not in doc:
        raise ConfigError("data.path", f"{where}: expected {FORMATS}; got the keys {sorted(doc)}")
    chosen, rejected, prompt = doc["chosen"], doc["rejected"], doc.get("prompt")
    if isinstance(chosen, str) or isinstance(rejected, str):
        for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(v, str):
                raise ConfigError("data.path", f"{where}: a text pair needs prompt, chosen and rejected as strings; "
                                               f"{k} is {type(v).__name__}")
        if not chosen or not rejected:
            raise ConfigError("data.path", f"{where}: chosen and rejected must not be empty")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    if prompt is None:  # implicit prompt: the messages both completions share
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not prompt:
            raise ConfigError("data.path", f"{where}: chosen and rejected share no messages, so there is no prompt; "
                                           "give it as \"prompt\"")
    else:
        prompt = _messages(prompt, where, "prompt")
    for k, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[0]["role"] != "assistant":
            raise ConfigError("data.path", f"{where}: the {k} completion must start with an assistant message, got "
                                           f"{msgs[0]['role']!r}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ConfigError("data.path", f"{where}: {key} must be a string or a non-empty list of messages")
    for i, m in enumerate(value):
        if not (isinstance(m, Mapping) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ConfigError("data.path", f"{where}: {key}[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                                           f"\"content\": a string}}, got {str(m)[:80]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def tokenize_pair(tokenizer: Any, record: Mapping[str, Any]) -> Pair:
    """(prompt, chosen, rejected) token ids of a record from :func:`read_preferences` (see the module docstring)."""
    if "prompt_ids" in record:
        return list(record["prompt_ids"]), list(record["chosen_ids"]), list(record["rejected_ids"])
    prompt = record["prompt"]
    if isinstance(prompt, str):
        eos = getattr(tokenizer, "eos_id", None)
        bos = getattr(tokenizer, "bos_id", None) not in (None, eos)
        p = tokenizer.encode(prompt, add_bos=bos)
        out = [p]
        for k in ("chosen", "rejected"):
            full = tokenizer.encode(prompt + record[k], add_bos=bos)
            out.append(full[len(p):] + ([int(eos)] if eos is not None else []))
        return out[0], out[1], out[2]
    p = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    out = [list(p)]
    for k in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(prompt + record[k], tokenize=True, add_generation_prompt=False)
        out.append(list(full[len(p):]))
    return out[0], out[1], out[2]


class EpochLoader:
    """The epochs, shuffling and exact resume rl's loaders share: ``items`` in batches of ``batch_size``, shuffled
    per epoch from ``seed``; a subclass says what a batch of items becomes (``_make``), its ``kind`` and ``unit``,
    and any more fields a resume must match (``_identity``)."""

    kind, unit = "", ""

    def __init__(self, items: list[Any], tokenizer: Any, *, batch_size: int, seed: int, shuffle: bool,
                 drop_last: bool, epochs: int | None, split: str, source: str):
        self.items, self.tokenizer = items, tokenizer
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.epochs, self.split, self.source = epochs, split, source
        if len(self) == 0:
            raise ConfigError("data", f"{source} gives {len(items)} {split} {self.unit}, too few for one batch of "
                                      f"{batch_size}; use a smaller data.batch_size or more data")
        self.epoch, self.batches_done, self._end_epoch = 0, 0, epochs
        self.vocab_size = int(tokenizer.vocab_size)

    def __len__(self) -> int:
        n = len(self.items)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def load_tokenizer(self) -> Any:
        """The tokenizer the items were written with (train.run's ``build_tokenizer`` asks)."""
        return self.tokenizer

    def _make(self, items: list[Any]) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        if self.epochs is not None and self._end_epoch is not None and self.epoch >= self._end_epoch:
            self._end_epoch = self.epoch + self.epochs  # a new pass continues the epoch count (new shuffles)
        while self._end_epoch is None or self.epoch < self._end_epoch:
            order = (torch.randperm(len(self.items), generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.epoch)).tolist() if self.shuffle else list(range(len(self.items))))
            while self.batches_done < len(self):
                j = self.batches_done
                batch = self._make([self.items[i] for i in order[j * self.batch_size:(j + 1) * self.batch_size]])
                self.batches_done += 1
                yield batch
            self.epoch, self.batches_done = self.epoch + 1, 0

    def _identity(self) -> dict[str, Any]:
        return {self.unit: len(self.items), "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "split": self.split}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe position in the stream; save it with the training checkpoint."""
        return {"version": STATE_VERSION, "kind": self.kind, "epoch": self.epoch, "batches_done": self.batches_done,
                "end_epoch": self._end_epoch, **self._identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the position ``state`` records; ConfigError names a field that does not fit this loader."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or state.get("kind") != self.kind:
            raise ConfigError("data.state", f"expected the dict from {type(self).__name__}.state_dict()")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ConfigError(f"data.state.{key}", f"checkpoint has {state.get(key)!r}, this loader has "
                                                       f"{value!r}; an exact resume needs the same data and batching")
        epoch, done, end = state.get("epoch"), state.get("batches_done"), state.get("end_epoch")
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(done, int) and 0 <= done <= len(self)
                and (end is None or (isinstance(end, int) and end >= epoch))):
            raise ConfigError("data.state", f"epoch {epoch!r}, batches_done {done!r} or end_epoch {end!r} out of "
                                            f"range for this loader ({len(self)} batches an epoch)")
        self.epoch, self.batches_done, self._end_epoch = epoch, done, end


class PreferenceLoader(EpochLoader):
    """Iterable of paired Batch (``input_ids``, ``labels``, ``attention_mask``; chosen and rejected rows
    alternate); build it with :func:`build_preference_dataloader`."""

    paired = True  # the Trainer's check that a preference objective gets pairs (train.objective)
    kind, unit = "preference", "pairs"

    def __init__(self, pairs: list[Pair], tokenizer: Any, *, seq_len: int, **kw: Any):
        self.seq_len = seq_len
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = int(pad) if pad is not None else 0  # masked anyway
        super().__init__(pairs, tokenizer, **kw)

    @property
    def pairs(self) -> list[Pair]:
        return self.items

    def _make(self, pairs: list[Pair]) -> Batch:
        rows = []
        for prompt, chosen, rejected in pairs:
            rows += [_row(prompt, chosen, self.seq_len), _row(prompt, rejected, self.seq_len)]
        ids, labels, mask = padded(rows, self.seq_len, self.pad_id)
        return Batch(input_ids=ids, labels=labels, attention_mask=mask)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "seq_len": self.seq_len}


def padded(rows: Sequence[tuple[list[int], list[int]]], seq_len: int,
           pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask) of (inputs, labels) rows, right-padded to the longest rounded up to a
    multiple of 8 and at most ``seq_len`` (padding: ``pad_id``, labels -100, mask 0)."""
    T = min(seq_len, -(-max(len(ids) for ids, _ in rows) // 8) * 8)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        labels[r, :len(y)] = torch.tensor(y)
        mask[r, :len(x)] = 1
    return ids, labels, mask


def _row(prompt: Sequence[int], completion: Sequence[int], seq_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of prompt + completion: the first ``seq_len + 1`` tokens, the labels shifted by one
    and IGNORE_INDEX where the next token is still the prompt's."""
    full = (list(prompt) + list(completion))[:seq_len + 1]
    labels = [t if i >= len(prompt) else IGNORE_INDEX for i, t in enumerate(full)][1:]
    return full[:-1], labels


def has_targets(pair: Pair, seq_len: int) -> bool:
    """Both completions keep a target token after truncation to ``seq_len`` inputs (a completion's first token
    is a target when a prompt token precedes it)."""
    prompt = len(pair[0])
    return all(min(prompt + len(c), seq_len + 1) > max(prompt, 1) for c in pair[1:])


def build_preference_dataloader(path: str | os.PathLike[str], batch_size: int = 8, seq_len: int = 1024, *,
                                seed: int = 0, shuffle: bool = True, rank: int | None = None,
                                world_size: int | None = None, num_workers: int = 0, pack: bool = False,
                                doc_mask: bool = False, drop_last: bool = True, epochs: int | None = 1,
                                tokenizer: Any = None, val_fraction: float = 0.0, split: str = "train",
                                **_: Any) -> PreferenceLoader:
    """A :class:`PreferenceLoader` over the pairs in ``path`` (see the module docstring): ``batch_size`` pairs a
    batch, tokenized with ``tokenizer`` (an object with ``encode`` / ``apply_chat_template``, or a spec for the
    ``lmstack.tokenizers`` plugin ``auto``; default ``byte``). The global batch is every rank's (train.run slices
    it per rank, between pairs), so ``rank`` and ``world_size`` are accepted and unused, as is ``num_workers``.
    ``pack`` and ``doc_mask`` must be False."""
    tok = check_builder_args(batch_size, seq_len, seed, split, val_fraction, tokenizer, pack or doc_mask,
                             "preference data is one completion a row (padded, so each completion is scored whole)")
    records = read_preferences(path)
    chat = [where for where, r in records if "prompt" in r and not isinstance(r["prompt"], str)]
    if chat and not hasattr(tok, "apply_chat_template"):
        raise ConfigError("data.tokenizer", f"{chat[0]}: conversational pairs need a tokenizer with a chat "
                                            "template (apply_chat_template)")
    pairs, dropped = [], 0
    for where, record in records:
        pair = tokenize_pair(tok, record)
        if has_targets(pair, seq_len):
            pairs.append(pair)
        else:
            dropped += 1
            logger.debug("%s: the prompt's %d tokens leave no completion token within seq_len %d", where,
                         len(pair[0]), seq_len)
    if dropped:
        logger.info("%s: %d of %d pairs dropped: their prompt fills data.seq_len=%d", path, dropped, len(records),
                    seq_len)
    pairs = [pairs[i] for i in split_indices(len(pairs), val_fraction, seed, split)]
    return PreferenceLoader(pairs, tok, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle,
                            drop_last=drop_last, epochs=epochs, split=split, source=str(path))


build_preference_dataloader.paired = True  # type: ignore[attr-defined]  # train.run's preflight reads it


def check_builder_args(batch_size: Any, seq_len: Any, seed: Any, split: str, val_fraction: float, tokenizer: Any,
                       packed: bool, why_unpacked: str) -> Any:
    """The checks rl's dataset builders share (ConfigErrors naming the data field); returns the tokenizer: the
    object given, or the ``lmstack.tokenizers`` plugin ``auto``'s for a spec (default ``byte``)."""
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"data.{name}", f"expected an integer >= {low}, got {value!r}")
    if packed:
        raise ConfigError("data.pack", f"{why_unpacked}; set data.pack: false and data.doc_mask: false")
    if split not in ("train", "val"):
        raise ConfigError("split", f"expected 'train' or 'val', got {split!r}")
    if not (0.0 <= val_fraction < 1.0):
        raise ConfigError("data.val_fraction", f"expected a fraction in [0, 1), got {val_fraction!r}")
    spec = tokenizer is None or isinstance(tokenizer, (str, os.PathLike))
    return resolve("lmstack.tokenizers", "auto")(tokenizer or "byte") if spec else tokenizer


def split_indices(n: int, val_fraction: float, seed: int, split: str) -> list[int]:
    """The indices of ``n`` items in ``split``: a seeded ``val_fraction`` of them held out for "val", the rest
    "train" (all of them, and none for "val", when the fraction rounds to no item)."""
    n_val = int(round(n * val_fraction))
    if not (val_fraction and n_val):
        return list(range(n)) if split == "train" else []
    held = set(torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:n_val].tolist())
    return [i for i in range(n) if (i in held) == (split == "val")]
