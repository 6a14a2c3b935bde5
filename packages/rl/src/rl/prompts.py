"""Prompt data for online RL (GRPO, RLOO): one prompt a JSONL line, the ``lmstack.datasets`` plugin ``prompts``
(``data.dataset: prompts``).

Each line is ``{"prompt": "text" or [messages], ...}``; the other keys reach the reward functions as columns. A
batch is a :class:`PromptBatch` of token ids and records, which ``rl.grpo.GRPO.prepare`` turns into sampled
completions; it slices itself per rank (``rank_slice``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from rl.data import EpochLoader, check_builder_args, json_line, read_jsonl, split_indices
from specs.errors import ConfigError

logger = logging.getLogger("rl.prompts")
ROLES = ("system", "user", "assistant", "tool")


def read_prompts(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every line of ``path`` (a .jsonl file or a directory of them): ``{"prompt": text or
    messages, ...}``; the other keys are columns the reward functions receive."""
    return read_jsonl(path, _prompt_record, "prompts", '{"prompt": "..." or [messages], ...}')


def _prompt_record(line: str, where: str) -> dict[str, Any]:
    doc = json_line(line, where)
    if not isinstance(doc, Mapping) or "prompt" not in doc:
        raise ConfigError("data.path", f'{where}: expected {{"prompt": "..." or [messages], ...}}, got {line[:80]!r}')
    prompt = doc["prompt"]
    if isinstance(prompt, list):
        for i, m in enumerate(prompt):
            if not (isinstance(m, Mapping) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise ConfigError("data.path", f"{where}: prompt[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                                               f"\"content\": a string}}, got {str(m)[:80]!r}")
    elif not isinstance(prompt, str) or not prompt:
        raise ConfigError("data.path", f"{where}: prompt must be a non-empty string or a list of messages")
    return dict(doc)


def tokenize_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """A prompt's ids: the chat template with the generation prompt for messages, else the text (with the
    tokenizer's BOS where it has one other than its EOS, as rl.data does)."""
    if isinstance(prompt, str):
        eos = getattr(tokenizer, "eos_id", None)
        return list(tokenizer.encode(prompt, add_bos=getattr(tokenizer, "bos_id", None) not in (None, eos)))
    return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True))


class PromptBatch:
    """Prompts to sample from: their ids, the records as read (``prompt`` and the other columns)."""

    def __init__(self, ids: list[list[int]], records: list[dict[str, Any]]):
        self.ids, self.records = ids, records

    def __len__(self) -> int:
        return len(self.ids)

    def rank_slice(self, rank: int, world_size: int) -> PromptBatch:
        """Prompts ``[rank * n, (rank + 1) * n)``, ``n = len / world_size`` (train.run's RankSlice asks)."""
        if len(self) % world_size:
            raise ConfigError("data.batch_size", f"a batch of {len(self)} prompts does not split over {world_size} "
                                                 "ranks")
        n = len(self) // world_size
        return PromptBatch(self.ids[rank * n:(rank + 1) * n], self.records[rank * n:(rank + 1) * n])


class PromptLoader(EpochLoader):
    """Iterable of :class:`PromptBatch`, shuffled per epoch, resumable; build it with
    :func:`build_prompt_dataloader`."""

    prompts = True  # what train.objective checks an online objective gets
    kind, unit = "prompts", "prompts"

    def __init__(self, ids: list[list[int]], records: list[dict[str, Any]], tokenizer: Any, **kw: Any):
        super().__init__(list(zip(ids, records)), tokenizer, **kw)

    def _make(self, items: list[tuple[list[int], dict[str, Any]]]) -> PromptBatch:
        return PromptBatch([i for i, _ in items], [r for _, r in items])


def build_prompt_dataloader(path: str | os.PathLike[str], batch_size: int = 8, seq_len: int = 1024, *,
                            seed: int = 0, shuffle: bool = True, rank: int | None = None,
                            world_size: int | None = None, num_workers: int = 0, pack: bool = False,
                            doc_mask: bool = False, drop_last: bool = True, epochs: int | None = 1,
                            tokenizer: Any = None, val_fraction: float = 0.0, split: str = "train",
                            **_: Any) -> PromptLoader:
    """A :class:`PromptLoader` over the prompts in ``path`` (the ``lmstack.datasets`` plugin ``prompts``):
    ``batch_size`` prompts a batch (each sampled ``train.grpo.num_generations`` times), each at most ``seq_len``
    tokens (longer ones keep their end, as TRL truncates them, and are counted in the log). ``tokenizer`` as for
    rl.data's preference loader; ``rank``, ``world_size`` and ``num_workers`` accepted and unused; ``pack`` and
    ``doc_mask`` must be False."""
    tok = check_builder_args(batch_size, seq_len, seed, split, val_fraction, tokenizer, pack or doc_mask,
                             "prompts are sampled one a row")
    records = [r for _, r in read_prompts(path)]
    ids, cut = [], 0
    for r in records:
        p = tokenize_prompt(tok, r["prompt"])
        if len(p) > seq_len:
            p, cut = p[-seq_len:], cut + 1
        ids.append(p)
    if cut:
        logger.info("%s: %d of %d prompts longer than data.seq_len=%d keep their last tokens", path, cut,
                    len(records), seq_len)
    keep = split_indices(len(ids), val_fraction, seed, split)
    return PromptLoader([ids[i] for i in keep], [records[i] for i in keep], tok, batch_size=batch_size, seed=seed,
                        shuffle=shuffle, drop_last=drop_last, epochs=epochs, split=split, source=str(path))


build_prompt_dataloader.prompts = True  # type: ignore[attr-defined]  # train.run's preflight reads it


__all__ = ["PromptBatch", "PromptLoader", "build_prompt_dataloader", "read_prompts", "tokenize_prompt"]
