"""Supervised fine-tuning data: chat conversations in JSONL, tokenized with the tokenizer's chat template, loss on
the assistant's turns only (the ``lmstack.datasets`` plugin ``chat``: ``data.dataset: chat``).

Each line of a ``.jsonl`` file (``data.path``: one file, or a directory of them) is a conversation::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}
    {"prompt": "...", "completion": "..."}          (a user turn and the assistant's answer)

The conversation is rendered with the tokenizer's chat template (``apply_chat_template``; ChatML by default) and
every token of an assistant turn, its end-of-turn marker included, is a training target; system and user turns,
and the template's own framing, are context only (labels -100). A turn's tokens are found by rendering the
conversation up to it (with the generation prompt) and through it, so the template must render each prefix of
a conversation as a prefix of the whole (true of ChatML, Llama, Mistral and most templates): a conversation where
it does not is a ConfigError naming its file and line. This is TRL's ``assistant_only_loss`` / "completion only"
training, without generation tags in the template.

One conversation a row (``data.pack: false``), truncated to ``seq_len + 1`` tokens and right-padded to the batch's
longest row rounded up to a multiple of 8 (padding is masked: ``attention_mask`` 0, labels -100); a conversation
with no target left after truncation is skipped at build, and the count is logged. Rows are shuffled per epoch
from ``seed``; ``val_fraction`` holds out a fixed, seeded share of conversations (``split="val"``). The position in
the stream resumes exactly (``state_dict`` / ``load_state_dict``).

With ``data.pack: true`` (and ``data.doc_mask: true``, which it needs) conversations share rows: each, truncated as
above, is placed best-fit-decreasing (TRL's ``packing_strategy="bfd"``: longest first, into the fullest row it
fits) in rows of ``seq_len`` tokens, and a row's ``document_ids`` and ``positions`` restart at each conversation,
so attention stays inside it and its positions are its own: the loss on a packed row is the sum of its
conversations' losses alone (tested), with a fraction of the padding. ``data.batch_size`` then counts packed rows.
The rows are packed once, at build, and shuffled per epoch.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from data.loader import EpochCursor
from data.tokenizer.loading import load_tokenizer
from specs.batch import IGNORE_INDEX, Batch
from specs.errors import ConfigError

logger = logging.getLogger("data.sft")
STATE_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")


def read_conversations(path: str | os.PathLike[str]) -> list[tuple[str, list[dict[str, str]]]]:
    """(where, messages) of every conversation in ``path`` (a .jsonl file or a directory of them, sorted by
    name); ``where`` is ``file:line``. A malformed line is a ConfigError naming it and what was expected."""
    root = Path(path)
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise ConfigError("data.path", f"{path}: no .jsonl conversations there; expected a .jsonl file (or a "
                          'directory of them) with one {"messages": [...]} or {"prompt", "completion"} per line')
    out = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("data.path", f"{f}: cannot read it as UTF-8 text ({exc})") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                out.append((f"{f}:{n}", _messages(line, f"{f}:{n}")))
    if not out:
        raise ConfigError("data.path", f"{path}: the .jsonl files hold no conversations")
    return out


def _messages(line: str, where: str) -> list[dict[str, str]]:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError("data.path", f"{where}: not valid JSON ({exc.msg})") from None
    if isinstance(doc, Mapping) and "messages" in doc:
        msgs = doc["messages"]
    elif isinstance(doc, Mapping) and "prompt" in doc and "completion" in doc:
        msgs = [{"role": "user", "content": doc["prompt"]}, {"role": "assistant", "content": doc["completion"]}]
    else:
        raise ConfigError("data.path", f'{where}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": '
                          f"...}}, got {line[:80]!r}")
    if not isinstance(msgs, list) or not msgs:
        raise ConfigError("data.path", f"{where}: messages must be a non-empty list")
    for i, m in enumerate(msgs):
        if not (isinstance(m, Mapping) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ConfigError("data.path", f"{where}: messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                              f"\"content\": a string}}, got {str(m)[:80]!r}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ConfigError("data.path", f"{where}: no assistant turn, so nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def tokenize_conversation(tokenizer: Any, messages: Sequence[Mapping[str, str]], where: str = "conversation"
                          ) -> tuple[list[int], list[bool]]:
    """The conversation's ids under the tokenizer's chat template, and which of them are assistant tokens (the
    targets). ConfigError when the template does not render the conversation's prefixes as prefixes of it."""
    ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=False)
    target = [False] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = tokenizer.apply_chat_template(list(messages[:i]), tokenize=True, add_generation_prompt=True) if i \
            else []
        end = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=True, add_generation_prompt=False)
        if ids[:len(start)] != start or ids[:len(end)] != end or len(end) < len(start):
            raise ConfigError("data.path", f"{where}: the chat template does not render this conversation up to "
                              f"turn {i} as a prefix of the whole, so the assistant's tokens cannot be told apart; "
                              "use a template that renders turns in order (ChatML, Llama, Mistral)")
        for t in range(len(start), len(end)):
            target[t] = True
    return ids, target


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bins of the items of ``lengths`` (each at most ``capacity``): the longest first, each into
    the fullest bin with room for it (a new bin when none has); a bin lists its items in the order placed."""
    if any(n > capacity or n < 0 for n in lengths):
        raise ConfigError("lengths", f"every item must fit a bin of {capacity}")
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, bin), sorted: the first with space >= n is the best fit
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        j = bisect.bisect_left(room, (n, -1))
        if j == len(room):
            bins.append([i])
            left, b = capacity - n, len(bins) - 1
        else:
            left, b = room.pop(j)
            bins[b].append(i)
            left -= n
        if left > 0:
            bisect.insort(room, (left, b))
    return bins


class ChatLoader(EpochCursor):
    """Iterable of Batch (``input_ids``, ``labels``, ``attention_mask``; packed: also ``positions`` and
    ``document_ids``), one conversation a row or, with ``pack``, several; build it with
    :func:`build_chat_dataloader`."""

    def __init__(self, rows: list[tuple[list[int], list[bool]]], tokenizer: Any, *, batch_size: int, seq_len: int,
                 seed: int, shuffle: bool, drop_last: bool, epochs: int | None, split: str, source: str,
                 pack: bool = False):
        self.rows, self.tokenizer = rows, tokenizer
        self.batch_size, self.seq_len, self.seed, self.shuffle = batch_size, seq_len, seed, shuffle
        self.drop_last, self.epochs, self.split, self.source = drop_last, epochs, split, source
        self.pack = pack
        # the conversations of each row: one each, or best-fit-decreasing bins of their truncated inputs
        self.bins = (pack_best_fit([min(len(ids), seq_len + 1) - 1 for ids, _ in rows], seq_len) if pack
                     else [[i] for i in range(len(rows))])
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = int(pad) if pad is not None else 0  # masked anyway
        if len(self) == 0:
            what = f"{len(rows)} {split} conversations" + (f" ({len(self.bins)} packed rows)" if pack else "")
            raise ConfigError("data", f"{source} gives {what}, too few for one batch of {batch_size}; use a smaller "
                                      "data.batch_size or more data")
        self.epoch, self.batches_done = 0, 0
        self._end_epoch = epochs
        self.vocab_size = int(tokenizer.vocab_size)

    def __len__(self) -> int:
        n = len(self.bins)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def load_tokenizer(self) -> Any:
        """The tokenizer the rows were written with (train.run's ``build_tokenizer`` asks)."""
        return self.tokenizer

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        """``epoch``'s batches from batch ``start`` on, its rows shuffled by ``seed`` and the epoch."""
        if self.shuffle:
            order = torch.randperm(len(self.bins), generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch)).tolist()
        else:
            order = list(range(len(self.bins)))
        for j in range(start, len(self)):
            yield self._collate([self.bins[i] for i in order[j * self.batch_size:(j + 1) * self.batch_size]])

    def _collate(self, bins: list[list[int]]) -> Batch:
        T = self.seq_len
        if not self.pack:  # one conversation a row: as wide as the batch's longest, a multiple of 8
            longest = max(min(len(self.rows[b[0]][0]), T + 1) - 1 for b in bins)
            T = min(T, -(-longest // 8) * 8)
        ids = torch.full((len(bins), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(bins), T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(bins), T), dtype=torch.long)
        positions = torch.zeros((len(bins), T), dtype=torch.long)
        docs = torch.zeros((len(bins), T), dtype=torch.long)
        for r, members in enumerate(bins):
            at = 0
            for d, i in enumerate(members):
                toks, target = self.rows[i][0][:T + 1], self.rows[i][1][:T + 1]
                n = len(toks) - 1
                ids[r, at:at + n] = torch.tensor(toks[:-1])
                labels[r, at:at + n] = torch.tensor([t if keep else IGNORE_INDEX
                                                     for t, keep in zip(toks[1:], target[1:])])
                mask[r, at:at + n] = 1
                positions[r, at:at + n] = torch.arange(n)
                docs[r, at:at + n] = d
                at += n
            positions[r, at:] = torch.arange(T - at)  # the padding: a document of its own, after the others
            docs[r, at:] = len(members)
        if not self.pack:
            return Batch(input_ids=ids, labels=labels, attention_mask=mask)
        return Batch(input_ids=ids, labels=labels, attention_mask=mask, positions=positions, document_ids=docs)

    def _identity(self) -> dict[str, Any]:
        extra = {"packed_rows": len(self.bins)} if self.pack else {}  # (unpacked: as before packing existed)
        return {"rows": len(self.rows), "batch_size": self.batch_size, "seq_len": self.seq_len, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "split": self.split, **extra}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe position in the stream; save it with the training checkpoint."""
        return {"version": STATE_VERSION, "kind": "chat", "epoch": self.epoch, "batches_done": self.batches_done,
                "end_epoch": self._end_epoch, **self._identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the position ``state`` records; ConfigError names a field that does not fit this loader."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or state.get("kind") != "chat":
            raise ConfigError("data.state", "expected the dict from ChatLoader.state_dict()")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ConfigError(f"data.state.{key}", f"checkpoint has {state.get(key)!r}, this loader has "
                                  f"{value!r}; an exact resume needs the same data and batching")
        epoch, done, end = state.get("epoch"), state.get("batches_done"), state.get("end_epoch")
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(done, int) and 0 <= done <= len(self)
                and (end is None or (isinstance(end, int) and end >= epoch))):
            raise ConfigError("data.state", f"epoch {epoch!r}, batches_done {done!r} or end_epoch {end!r} out of range "
                              f"for this loader ({len(self)} batches an epoch)")
        self.epoch, self.batches_done, self._end_epoch = epoch, done, end


def build_chat_dataloader(path: str | os.PathLike[str], batch_size: int = 8, seq_len: int = 1024, *, seed: int = 0,
                          shuffle: bool = True, rank: int | None = None, world_size: int | None = None,
                          num_workers: int = 0, pack: bool = False, doc_mask: bool = False, drop_last: bool = True,
                          epochs: int | None = 1, tokenizer: Any = None, val_fraction: float = 0.0,
                          split: str = "train", **_: Any) -> ChatLoader:
    """A :class:`ChatLoader` over the conversations in ``path`` (see the module docstring), tokenized with
    ``tokenizer`` (a spec or object with ``apply_chat_template``; default ``byte``). The global batch is every
    rank's (train.run slices it per rank), so ``rank`` and ``world_size`` are accepted and unused, as is
    ``num_workers`` (the conversations are tokenized in memory at build). ``pack`` (with ``doc_mask``, which it
    needs) packs conversations into rows (see the module docstring); ``doc_mask`` alone is a ConfigError."""
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"data.{name}", f"expected an integer >= {low}, got {value!r}")
    if pack and not doc_mask:
        raise ConfigError("data.doc_mask", "packed chat rows need data.doc_mask: true, so each conversation attends "
                                           "to itself alone; or set data.pack: false (one conversation a row)")
    if doc_mask and not pack:
        raise ConfigError("data.doc_mask", "one conversation a row has no documents to mask; set data.pack: true to "
                                           "pack conversations (with doc_mask), or data.doc_mask: false")
    if split not in ("train", "val", "all"):
        raise ConfigError("data.split", f"expected 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("data.val_fraction", f"expected 0 <= val_fraction < 1, got {val_fraction}")
    tok = load_tokenizer(tokenizer if tokenizer is not None else "byte")
    convs = read_conversations(path)
    order = torch.randperm(len(convs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(len(convs) * val_fraction))
    held = set(order[:n_val])
    chosen = [c for i, c in enumerate(convs) if split == "all" or (i in held) == (split == "val")]
    rows, skipped = [], 0
    for where, msgs in chosen:
        ids, target = tokenize_conversation(tok, msgs, where)
        if not any(target[1:seq_len + 1]):
            skipped += 1  # its assistant tokens all lie past seq_len + 1
            continue
        rows.append((ids, target))
    if skipped:
        logger.warning("%s: %d of %d %s conversations skipped: no assistant token within seq_len=%d", path, skipped,
                       len(chosen), split, seq_len)
    return ChatLoader(rows, tok, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle,
                      drop_last=drop_last, epochs=epochs, split=split, source=str(path), pack=pack)
