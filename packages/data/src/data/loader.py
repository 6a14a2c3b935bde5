"""``build_dataloader``: a resumable, rank- and worker-aware stream of ``specs.batch.Batch`` over mmap shards.

The order of samples and their split over ranks and DataLoader workers is defined in :mod:`data.sampling`
(no overlap, no gap, deterministic under ``seed``, reshuffled per epoch); rows are built in :mod:`data.collate`.
``state_dict()`` records the epoch and how many batches this rank has handed out; after
``load_state_dict()`` the loader yields exactly the batches the uninterrupted run would have, for any
``num_workers``. Example (the seed's)::

    dl = build_dataloader("/corpus/shards", batch_size=8, seq_len=1024)
    for batch in dl:  # Batch(input_ids (8, 1024), labels, attention_mask, positions, document_ids)
        ...
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from data.collate import packed_batch, padded_batch
from data.embedded import DEFAULT_BUDGET_BYTES, embedded_shards
from data.sampling import SampleSpace, Schedule, split_subset
from data.shards import ShardSet
from data.tokenizer.loading import TRAINED_KINDS
from specs.batch import Batch
from specs.errors import ConfigError

STATE_VERSION = 1


class _EpochStream(torch.utils.data.IterableDataset):
    """One epoch of one rank, from batch ``start`` on; each DataLoader worker takes every K-th batch."""

    def __init__(self, loader: ShardLoader, epoch: int, start: int) -> None:
        self.shards = loader.shards.shards
        self.space, self.schedule = loader.space, loader.schedule
        self.seq_len, self.doc_mask, self.pad_id = loader.seq_len, loader.doc_mask, loader.pad_id
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        k, w = (1, 0) if info is None else (info.num_workers, info.id)
        order = self.schedule.epoch_order(self.epoch)
        for j in range(self.start + w, self.schedule.batches_per_epoch(), k):
            shard, start, length = self.space.locate(self.schedule.batch_ids(order, j))
            if self.space.pack:
                yield packed_batch(self.shards, shard, start, self.seq_len, doc_mask=self.doc_mask)
            else:
                yield padded_batch(self.shards, shard, start, length, self.seq_len, pad_id=self.pad_id)


def _identity(x: Any) -> Any:
    return x


class EpochCursor:
    """The position in a stream of epochs that the loaders share (:class:`ShardLoader`, ``data.sft.ChatLoader``):
    ``epoch``, ``batches_done`` (this epoch's batches handed out), ``_end_epoch`` (None: forever) and ``epochs``
    (per pass). A subclass gives ``__len__`` (batches an epoch) and ``_epoch_batches(epoch, start)`` (that epoch's
    batches from ``start`` on)."""

    epoch: int
    batches_done: int
    epochs: int | None
    _end_epoch: int | None

    def __len__(self) -> int:
        raise NotImplementedError

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        if self.epochs is not None and self._end_epoch is not None and self.epoch >= self._end_epoch:
            self._end_epoch = self.epoch + self.epochs  # a new pass continues the epoch count (new shuffles)
        while self._end_epoch is None or self.epoch < self._end_epoch:
            if self.batches_done >= len(self):
                self.epoch, self.batches_done = self.epoch + 1, 0
                continue
            for batch in self._epoch_batches(self.epoch, self.batches_done):
                self.batches_done += 1  # counted before the yield: a checkpoint taken now resumes after it
                yield batch


class ShardLoader(EpochCursor):
    """Iterable of Batch; ``len()`` is batches per epoch for this rank. Build it with :func:`build_dataloader`."""

    def __init__(self, shards: ShardSet, *, batch_size: int, seq_len: int, seed: int, shuffle: bool, rank: int,
                 world_size: int, num_workers: int, pack: bool, doc_mask: bool, drop_last: bool,
                 epochs: int | None, val_fraction: float, split: str, pin_memory: bool,
                 prefetch_factor: int | None) -> None:
        self.shards = shards
        self.batch_size, self.seq_len = batch_size, seq_len
        self.pack, self.doc_mask = pack, doc_mask
        self.num_workers, self.epochs = num_workers, epochs
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        pad = shards.tokenizer.get("pad_id")
        self.pad_id = int(pad) if pad is not None else 0  # padding is masked anyway
        self.space = SampleSpace(shards, seq_len, pack=pack)
        self.split = split
        self.schedule = Schedule(num_samples=self.space.num_samples, batch_size=batch_size, rank=rank,
                                 world_size=world_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                                 subset=split_subset(self.space.num_samples, val_fraction, split))
        if self.schedule.batches_per_epoch() == 0:
            raise ConfigError("data", (
                f"{shards.directory} gives {self.schedule.size} {split} samples of seq_len+1={seq_len + 1} tokens "
                f"({shards.num_tokens} tokens in {len(shards)} shards), too few for one batch of {batch_size} on "
                f"each of {world_size} ranks; use a smaller seq_len/batch_size, drop_last=False or more data"))
        self.epoch, self.batches_done = 0, 0
        self._end_epoch = epochs

    # ---- iteration -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.schedule.batches_per_epoch()

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        stream = _EpochStream(self, epoch, start)
        if self.num_workers == 0:
            it: Any = iter(stream)
        else:
            it = iter(torch.utils.data.DataLoader(
                stream, batch_size=None, collate_fn=_identity, num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor, multiprocessing_context=None))
        pin = self.pin_memory and torch.cuda.is_available()
        for batch in it:
            yield Batch(**{k: v.pin_memory() for k, v in batch.as_dict().items()}) if pin else batch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (like DistributedSampler.set_epoch)."""
        self.epoch, self.batches_done = _check_int("epoch", epoch, 0), 0
        if self.epochs is not None:
            self._end_epoch = self.epoch + self.epochs

    # ---- resume ----------------------------------------------------------------------------------------------
    def _identity_fields(self) -> dict[str, Any]:
        s = self.schedule
        return {"num_samples": s.size, "batch_size": self.batch_size, "seq_len": self.seq_len, "pack": self.pack,
                "rank": s.rank, "world_size": s.world_size, "seed": s.seed, "shuffle": s.shuffle,
                "drop_last": s.drop_last, "split": self.split, "num_tokens": self.shards.num_tokens}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe position in the stream; save it with the training checkpoint."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_done": self.batches_done,
                "end_epoch": self._end_epoch, **self._identity_fields()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the position ``state`` (from :meth:`state_dict`) records; ConfigError names a bad field.

        ``epoch`` is an integer >= 0, ``batches_done`` one in ``[0, len(self)]`` (``len(self)``: the epoch has
        been handed out) and ``end_epoch`` None (stream forever) or an integer >= ``epoch``.
        """
        if not isinstance(state, Mapping):
            raise ConfigError("data.state", f"expected the dict from ShardLoader.state_dict(), got "
                              f"{type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ConfigError("data.state.version", f"expected {STATE_VERSION}, got {state.get('version')!r}")
        for key, value in self._identity_fields().items():
            if state.get(key) != value:
                raise ConfigError(f"data.state.{key}", f"checkpoint has {state.get(key)!r}, this loader has "
                                  f"{value!r}; an exact resume needs the same data and batching")
        epoch = _check_int("data.state.epoch", state.get("epoch"), 0)
        batches_done = _check_int("data.state.batches_done", state.get("batches_done"), 0, len(self),
                                  f"this loader has {len(self)} batches per epoch")
        end_epoch = state.get("end_epoch", self.epochs)
        if "end_epoch" in state and end_epoch is not None:
            if not _is_int(end_epoch) or end_epoch < epoch:
                raise ConfigError("data.state.end_epoch", f"expected None (stream forever) or an integer >= the "
                                  f"state's epoch ({epoch}), got {end_epoch!r}")
            end_epoch = int(end_epoch)
        self.epoch, self.batches_done, self._end_epoch = epoch, batches_done, end_epoch

    # ---- provenance ------------------------------------------------------------------------------------------
    @property
    def tokenizer_info(self) -> dict[str, Any]:
        return self.shards.tokenizer

    def load_tokenizer(self) -> Any:
        """The tokenizer the shards were written with (its saved copy when the manifest has one)."""
        from data.tokenizer import load_tokenizer

        info = self.tokenizer_info
        if info.get("path"):
            return load_tokenizer(str(self.shards.directory / info["path"]))
        return load_tokenizer(info.get("spec", "byte"))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int | None = None, note: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None), else a ConfigError."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(name, f"expected an integer {bound}{f' ({note})' if note else ''}, got {value!r}")
    return int(value)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        try:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        except ValueError as exc:
            raise ConfigError("RANK/WORLD_SIZE", f"environment values must be integers: {exc}") from None
    elif rank is None or world_size is None:
        raise ConfigError("rank", "pass both rank and world_size, or neither (then torch.distributed or the "
                          "RANK/WORLD_SIZE environment decide)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError("rank", f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return rank, world_size


def _check_tokenizer(shards: ShardSet, tokenizer: Any) -> None:
    info = shards.tokenizer
    if isinstance(tokenizer, str) and tokenizer.partition(":")[0] in TRAINED_KINDS:
        if tokenizer != info.get("spec"):
            raise ConfigError("tokenizer", f"{shards.directory} was tokenized with {info.get('spec')!r}, "
                              f"not {tokenizer!r}")
        return
    from data.tokenizer import load_tokenizer

    fp = load_tokenizer(tokenizer).fingerprint()
    if fp != info.get("fingerprint"):
        raise ConfigError("tokenizer", f"{tokenizer!r} (fingerprint {fp[:12]}) is not the tokenizer "
                          f"{shards.directory} was written with ({info.get('spec')!r}, "
                          f"fingerprint {str(info.get('fingerprint'))[:12]})")


def build_dataloader(path: str | os.PathLike[str] = "embedded", batch_size: int = 8, seq_len: int = 1024, *,
                     seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None,
                     num_workers: int = 0, pack: bool = True, doc_mask: bool = False, drop_last: bool = True,
                     epochs: int | None = 1, tokenizer: Any = None, val_fraction: float = 0.0,
                     split: Literal["train", "val", "all"] = "train", verify: bool = False,
                     pin_memory: bool = False, prefetch_factor: int | None = None,
                     cache_dir: str | os.PathLike[str] | None = None,
                     embedded_budget_bytes: int = DEFAULT_BUDGET_BYTES) -> ShardLoader:
    """Stream (B=batch_size, T=seq_len) batches from the shard directory ``path``.

    ``path="embedded"`` builds (once, cached in ``cache_dir`` or ``~/.cache/lmstack/embedded``) shards of the
    Python standard library with ``tokenizer`` (default ``byte``). For a shard directory, ``tokenizer`` (a spec
    or object) is checked against the manifest's fingerprint. ``rank``/``world_size`` default to
    torch.distributed when initialised, else the RANK/WORLD_SIZE environment, else 0/1. ``epochs=None`` streams
    forever. ``val_fraction`` holds out a fixed share of samples, served with ``split="val"``. ``verify=True``
    checks every shard's sha256 first (lengths are always checked). ``prefetch_factor`` (None or >= 1) goes to
    ``torch.utils.data.DataLoader`` and is unused with ``num_workers=0``; ``seed`` is an integer >= 0.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("num_workers", num_workers, 0),
                             ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"data.{name}", f"expected an integer >= {low}, got {value!r}")
    if prefetch_factor is not None and (not _is_int(prefetch_factor) or prefetch_factor < 1):
        raise ConfigError("data.prefetch_factor", f"expected None (torch's default, 2) or an integer >= 1 (batches "
                          f"each DataLoader worker loads ahead), got {prefetch_factor!r}")
    if not isinstance(pin_memory, bool):
        raise ConfigError("data.pin_memory", f"expected True or False, got {pin_memory!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError("data.epochs", f"expected a positive integer or None (forever), got {epochs!r}")
    if split not in ("train", "val", "all"):
        raise ConfigError("data.split", f"expected 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("data.val_fraction", f"expected 0 <= val_fraction < 1, got {val_fraction}")
    if doc_mask and not pack:
        raise ConfigError("data.doc_mask", "doc_mask needs pack=True (unpacked rows hold one document each)")
    rank, world_size = _resolve_rank(rank, world_size)
    if str(path) == "embedded":
        directory = embedded_shards(tokenizer if tokenizer is not None else "byte", cache_dir=cache_dir,
                                    budget_bytes=embedded_budget_bytes)
        shards = ShardSet.open(directory, verify=verify)
    else:
        shards = ShardSet.open(Path(path), verify=verify)
        if tokenizer is not None:
            _check_tokenizer(shards, tokenizer)
    return ShardLoader(shards, batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle, rank=rank,
                       world_size=world_size, num_workers=num_workers, pack=pack, doc_mask=doc_mask,
                       drop_last=drop_last, epochs=epochs, val_fraction=val_fraction, split=split,
                       pin_memory=pin_memory, prefetch_factor=prefetch_factor)


def loader_from_config(cfg: Any, *, split: Literal["train", "val", "all"] = "train", epochs: int | None = None,
                       rank: int | None = None, world_size: int | None = None, **kwargs: Any) -> ShardLoader:
    """``build_dataloader`` from a ``specs.config.DataConfig`` (what train.run calls)."""
    return build_dataloader(cfg.path, cfg.batch_size, cfg.seq_len, seed=cfg.seed, shuffle=cfg.shuffle, rank=rank,
                            world_size=world_size, num_workers=cfg.num_workers, pack=cfg.pack,
                            doc_mask=cfg.doc_mask, epochs=epochs, tokenizer=cfg.tokenizer,
                            val_fraction=cfg.val_fraction, split=split, **kwargs)


__all__ = ["ShardLoader", "build_dataloader", "loader_from_config"]
