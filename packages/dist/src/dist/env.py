"""Process groups from the torchrun environment: ``init()``, the device each rank uses, and small CPU collectives.

Launching is torchrun's job, not ours (never a home-made launcher protocol). One node::

    torchrun --nproc_per_node=8 -m train.run --config cfgs/llm_small.yaml

Several nodes: run the same command on every node with a c10d rendezvous (any node's address works as endpoint)::

    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node0.example:29500 \\
             --rdzv-id=my-run -m train.run --config cfgs/llama_1b.yaml

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them
and initialises the default process group: NCCL when the rank's device is CUDA, gloo on CPU. Without torchrun
(``python -m train.run``) it is one process; a strategy other than ``none`` then gets a one-rank group so the same
code path runs. NCCL groups also get a gloo side group for CPU-only agreement (stop flags) that must not touch the GPU.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from specs.config import DistConfig
from specs.errors import ConfigError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size`` processes, its device, the backend in use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group
    cpu_group: Any = None  # a gloo group for CPU collectives (the default group when it is gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.backend is not None


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS)


def select_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA device when CUDA is present, else CPU. ``cuda`` means ``cuda:<LOCAL_RANK>``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError("train.device", f"not a torch device: {spec!r} ({exc}); expected auto, cpu, cuda, cuda:N, "
                          "mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device", f"{spec!r} asked for but CUDA is not available on this machine; use "
                              "'cpu' or 'auto'")
        index = local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            hint = ("; it is this process's local rank: run no more processes a node than it has GPUs (torchrun "
                    "--nproc_per_node) or set train.device to cpu" if dev.index is None else "")
            raise ConfigError("train.device", f"cuda:{index} does not exist ({torch.cuda.device_count()} visible "
                                              f"GPUs){hint}")
        dev = torch.device("cuda", index)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device", "'mps' asked for but the MPS backend is not available")
    return dev


def _backend(cfg: DistConfig, device: torch.device) -> str:
    if cfg.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if cfg.backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend", f"'nccl' needs CUDA devices, but this rank runs on {device.type}; use "
                          "'gloo' or 'auto'")
    return cfg.backend


def init(cfg: DistConfig | None = None, device: str = "auto", *, timeout_s: float = 1800.0) -> DistEnv:
    """Initialise the default process group from torchrun's environment; return this rank's :class:`DistEnv`.

    Idempotent: an already initialised group is described, not re-created.
    """
    cfg = cfg or DistConfig()
    if tdist.is_available() and tdist.is_initialized():
        return current(device)
    torchrun = launched_by_torchrun()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = select_device(device, local_rank)
    if not torchrun and cfg.strategy == "none":
        return DistEnv(device=dev)
    if not tdist.is_available():
        raise ConfigError("dist.strategy", f"{cfg.strategy!r} needs torch.distributed, which this torch build lacks")
    backend = _backend(cfg, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=timeout_s)
    if torchrun:
        kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        tdist.init_process_group(backend, timeout=timeout, **kwargs)
    else:  # one process that still wants the distributed code path (e.g. FSDP on one GPU)
        tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return _describe(dev, backend, local_rank)


def current(device: str = "auto") -> DistEnv:
    """Describe the process group someone already initialised (or a single process when there is none)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not (tdist.is_available() and tdist.is_initialized()):
        return DistEnv(device=select_device(device, local_rank))
    backend = tdist.get_backend()
    dev = select_device("cuda" if backend == "nccl" and device == "auto" else device, local_rank)
    return _describe(dev, backend, local_rank)


def _describe(dev: torch.device, backend: str, local_rank: int) -> DistEnv:
    # A gloo side group lets ranks agree on CPU flags without a GPU round trip (creating it is collective).
    cpu_group = None if backend == "gloo" else tdist.new_group(backend="gloo")
    return DistEnv(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local_rank, device=dev,
                   backend=backend, cpu_group=cpu_group)


def destroy() -> None:
    """Tear down the default process group if one exists (safe to call twice)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a CPU all-reduce; no GPU sync)."""
    if not env.initialized or env.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=env.cpu_group)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.initialized and env.world_size > 1:
        tdist.barrier(group=env.cpu_group)


def broadcast_json(env: DistEnv, obj: Any, src: int = 0) -> Any:
    """Send a small JSON-serialisable object from ``src`` to every rank over the CPU group (JSON, never pickle)."""
    if not env.initialized or env.world_size == 1:
        return obj
    payload = json.dumps(obj).encode() if env.rank == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    tdist.broadcast(size, src=src, group=env.cpu_group)
    if env.rank == src:
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    else:
        buf = torch.empty(int(size.item()), dtype=torch.uint8)
    tdist.broadcast(buf, src=src, group=env.cpu_group)
    return json.loads(bytes(buf.tolist()).decode()) if env.rank != src else obj
