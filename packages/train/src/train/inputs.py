"""What ``train.run`` builds by name before training: data loaders and the tokenizer (plugins), plus the checks
that must fail before any work is done (batch divisibility, writable output, precision, resume path).

Data: every rank reads the same global batch stream (``data.batch_size`` rows per optimizer step) and keeps its
own ``batch_size / world_size`` rows (:class:`RankSlice`). Token shards are memory-mapped, so reading the
global batch costs a few MB per step, and in return the data order, the losses and the loader state do not
depend on the world size: a run resumes exactly on any number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dist
from specs.batch import Batch
from specs.config import RunConfig
from specs.errors import ConfigError
from specs.plugins import resolve
from train import adapters, checkpoint, init_from, objective
from train.loss import as_batch
from train.trainer import resolve_precision


class RankSlice:
    """Rows ``[rank * n, (rank + 1) * n)`` of each global batch, ``n = B / world_size``; state is the global one.
    A batch with a ``rank_slice(rank, world_size)`` method (rl's prompt batches) slices itself."""

    state_is_global = True

    def __init__(self, loader: Any, rank: int, world_size: int):
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if callable(getattr(batch, "rank_slice", None)):  # a batch that is not rows of tensors (prompts)
                yield batch.rank_slice(self.rank, self.world_size)
                continue
            b = as_batch(batch)
            rows = b.shape[0]
            if rows % self.world_size:
                raise ConfigError("data.batch_size",
                                  f"a batch of {rows} rows does not split over {self.world_size} ranks")
            n = rows // self.world_size
            yield Batch(**{k: v[self.rank * n:(self.rank + 1) * n] for k, v in b.as_dict().items()})

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:  # provenance (shards, tokenizer_info, ...) of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def preflight(cfg: RunConfig, env: dist.DistEnv) -> None:
    """Every check that needs no data or model, so a bad run stops before doing work."""
    init_from.check(cfg)
    adapters.check(cfg)
    objective.check(cfg)
    rows, world, accum = cfg.data.batch_size, env.world_size, cfg.train.grad_accum
    if world > 1 and cfg.dist.strategy == "none":
        raise ConfigError("dist.strategy", f"'none' with {world} processes would train {world} unsynchronised copies; "
                                           "choose DDP, FSDP or ZeRO1")
    if rows % world:
        raise ConfigError("data.batch_size",
                          f"the global batch of {rows} rows does not divide over world size {world}; "
                          f"use a multiple of {world}")
    if (rows // world) % accum:
        raise ConfigError("train.grad_accum",
                          f"each rank's {rows // world} rows do not split into {accum} micro-batches; data.batch_size "
                          f"must be a multiple of world_size x grad_accum = {world * accum}")
    precision, field = resolve_precision(cfg.train, cfg.dist)
    dist.check_precision(precision, env.device, field)
    if env.is_main:
        checkpoint.check_writable(cfg.train.out_dir)
    if cfg.train.resume is None:
        checkpoint.check_new_run(cfg.train.out_dir)
    if cfg.train.resume not in (None, "auto"):
        checkpoint.resolve_resume(cfg.train.resume, cfg.train.out_dir)
    if cfg.data.path != "embedded" and not Path(cfg.data.path).exists():
        raise ConfigError("data.path", f"{cfg.data.path} does not exist; build shards with "
                                       "`python -m corpus.cli build` or use path: embedded")


def build_data(cfg: RunConfig, env: dist.DistEnv) -> tuple[RankSlice, RankSlice | None, Path | None]:
    """(train loader, eval loader or None, shard directory) through the ``lmstack.datasets`` plugin ``data.dataset``."""
    build = resolve("lmstack.datasets", cfg.data.dataset)
    d = cfg.data
    common = dict(seed=d.seed, rank=0, world_size=1, num_workers=d.num_workers, pack=d.pack, doc_mask=d.doc_mask,
                  tokenizer=d.tokenizer, val_fraction=d.val_fraction)
    # Rank 0 first: building the embedded corpus (or any cache) once, then the others open it.
    loaders: dict[str, Any] = {}
    for turn in ("main", "rest"):
        if (turn == "main") == env.is_main:
            loaders["train"] = build(d.path, d.batch_size, d.seq_len, shuffle=d.shuffle, epochs=None, split="train",
                                     **common)
            if d.val_fraction > 0:
                loaders["val"] = build(d.path, d.batch_size, d.seq_len, shuffle=False, epochs=1, split="val", **common)
        dist.barrier(env)
    train = RankSlice(loaders["train"], env.rank, env.world_size)
    val = RankSlice(loaders["val"], env.rank, env.world_size) if "val" in loaders else None
    shards = getattr(loaders["train"], "shards", None)
    return train, val, getattr(shards, "directory", None)


def build_tokenizer(cfg: RunConfig, loader: Any) -> Any:
    """The tokenizer the data was written with (the loader knows), else ``lmstack.tokenizers:auto(spec)``."""
    if hasattr(loader, "load_tokenizer"):
        tok = loader.load_tokenizer()
    else:
        tok = resolve("lmstack.tokenizers", "auto")(cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                                              f"({tok.vocab_size} ids from {cfg.data.tokenizer!r})")
    return tok
