"""Data-parallel strategies applied from outside the model: ``apply(model, dist_cfg, device)``.

- ``DDP``: ``torch.nn.parallel.DistributedDataParallel`` (Li et al. 2020, "PyTorch Distributed").
- ``FSDP``: FSDP2, ``torch.distributed.fsdp.fully_shard`` on every unit of ``dist.fsdp_unit_blocks``
  consecutive blocks (default "auto": about 30M parameters per unit, see :func:`unit_blocks`) and then the root
  (Zhao et al. 2023, "PyTorch FSDP"; torchtitan's
  ``apply_fsdp``), with a ``MixedPrecisionPolicy`` (params cast to bf16/fp16 for
  compute, gradients reduced in fp32) and ``CPUOffloadPolicy`` when ``dist.cpu_offload``.
- ``ZeRO1``: DDP for gradients plus ``torch.distributed.optim.ZeroRedundancyOptimizer``, which shards optimizer
  state across ranks (Rajbhandari et al. 2020, "ZeRO", stage 1); see :func:`build_optimizer`.

The order is torchtitan's: activation checkpointing, then compile, then the parallel wrapper.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from dist.blocks import apply_activation_checkpointing, compile_blocks, compile_whole, find_blocks
from dist.precision import dtype_of
from specs.config import DistConfig
from specs.errors import ConfigError


def apply(model: nn.Module, cfg: DistConfig, device: torch.device | str, *, grad_ckpt: bool | None = None,
          compile: bool = False, precision: str | None = None) -> nn.Module:
    """Prepare ``model`` for training on ``device`` under ``cfg.strategy``; returns the module to call.

    ``grad_ckpt`` (default ``cfg.grad_ckpt``) wraps blocks for activation checkpointing; ``compile`` compiles
    the whole model (strategy none) or each block (DDP, FSDP, ZeRO1); ``precision`` (default ``cfg.precision``)
    sets FSDP's mixed-precision policy. DDP/FSDP/ZeRO1 need an initialised process group (``dist.init``). FSDP
    shards in place and returns ``model`` itself, whose ``forward`` and, where it has one, ``loss`` method
    (``model.lm.TransformerLM.loss``) gather the sharded weights as they run. DDP and ZeRO1 return a wrapper: call
    it (its ``forward``), so a model whose loss is a method goes in a module whose forward returns it
    (``train.loss.LossModule``, as the Trainer does).
    """
    device = torch.device(device)
    strategy = cfg.strategy
    if strategy != "none" and not (tdist.is_available() and tdist.is_initialized()):
        raise ConfigError("dist.strategy", f"{strategy!r} needs an initialised process group: launch with "
                                           "torchrun -m train.run, or call dist.init() first")
    if grad_ckpt if grad_ckpt is not None else cfg.grad_ckpt:
        try:
            apply_activation_checkpointing(model)
        except ValueError as exc:
            raise ConfigError("dist.grad_ckpt", str(exc)) from None
    if compile:
        # Alone, the model compiles whole (the bare loop of `eval.bench train-compare`: one graph, the loss head
        # fused); under DDP/FSDP each block compiles apart, which composes with their per-block hooks.
        if strategy == "none":
            compile_whole(model)
        else:
            compile_blocks(model)
    if strategy == "FSDP":
        return _apply_fsdp(model, cfg, device, precision or cfg.precision)
    model.to(device)
    if strategy in ("DDP", "ZeRO1"):
        ids = [device.index] if device.type == "cuda" else None
        # Buffers are made equal once, at wrapping; a language model's are constants from there on (RoPE tables,
        # a QLoRA base's 4-bit weights), so they are not broadcast again before every forward (DDP's default,
        # which for QLoRA sent the whole base each micro-batch).
        return DDP(model, device_ids=ids, broadcast_buffers=False)
    return model


def _apply_fsdp(model: nn.Module, cfg: DistConfig, device: torch.device, precision: str) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh

    integer = next((n for n, p in model.named_parameters() if not p.is_floating_point()), None)
    if integer is not None and not fsdp_shards_integers():
        raise ConfigError("dist.strategy", f"FSDP here cannot shard the integer parameter {integer!r} (QLoRA's "
                                           "4-bit base): FSDP2 shards integer parameters from torch 2.12 on "
                                           f"(pytorch#177844), this is torch {torch.__version__}; upgrade torch, or "
                                           "use DDP")
    mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
    kw: dict[str, Any] = {"mesh": mesh}
    if precision != "fp32":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype_of(precision), reduce_dtype=torch.float32)
    if cfg.cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    else:
        model.to(device)
    blocks = find_blocks(model)
    n = unit_blocks(blocks, cfg.fsdp_unit_blocks)
    units = [blocks[i:i + n] for i in range(0, len(blocks), n)]
    for i, unit in enumerate(units):
        # The last unit's params are needed again at the start of backward: keep them gathered.
        reshard = cfg.reshard_after_forward and i < len(units) - 1
        fully_shard(unit[0] if len(unit) == 1 else unit, reshard_after_forward=reshard, **kw)
    fully_shard(model, reshard_after_forward=cfg.reshard_after_forward, **kw)
    if callable(getattr(model, "loss", None)):
        # the root's hooks run on forward only; without this a call of model.loss meets the root's sharded
        # weights (the embedding's) as DTensors and fails
        register_fsdp_forward_method(model, "loss")
    return model


def fsdp_shards_integers() -> bool:
    """Whether this torch's FSDP2 shards frozen integer parameters (a QLoRA base's 4-bit bytes): torch 2.11 fails
    making them parameters (they are made with requires_grad=True) and would cast them under a mixed-precision
    policy; 2.12 fixed both."""
    return torch.torch_version.TorchVersion(torch.__version__) >= (2, 12)


# fsdp_unit_blocks="auto": parameters per FSDP unit to aim for. Measured on H200s (docs/benchmarks.md): GPT-2 124M
# (7M per block) at 16 rows per GPU ran 179k tokens/s per GPU with a unit per block, 235k with 4 blocks (28M) per
# unit, 257k with all 12 (85M; 2-GPU scaling 97% against 108% at 4).
FSDP_UNIT_PARAMS = 30_000_000


def unit_blocks(blocks: list[nn.Module], setting: int | str) -> int:
    """Blocks per FSDP unit for ``dist.fsdp_unit_blocks``: the number itself, or for "auto" as many blocks as fit
    in FSDP_UNIT_PARAMS parameters (at least one, at most all)."""
    if setting != "auto":
        return int(setting)
    if not blocks:
        return 1
    per_block = sum(p.numel() for p in blocks[0].parameters())
    return max(1, min(len(blocks), FSDP_UNIT_PARAMS // max(per_block, 1)))


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (FSDP2 shards in place, so it is its own module)."""
    return model.module if isinstance(model, DDP) else model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule) or any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce/reduce-scatter inside this block when ``enabled`` is False (accumulation)."""
    if enabled:
        yield
    elif isinstance(model, DDP):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def build_optimizer(cfg: DistConfig, optimizer_class: type[torch.optim.Optimizer], param_groups: list[dict[str, Any]],
                    **defaults: Any) -> torch.optim.Optimizer:
    """``optimizer_class(param_groups, **defaults)``, sharded across ranks (ZeRO-1) when ``cfg.strategy='ZeRO1'``."""
    if cfg.strategy != "ZeRO1":
        return optimizer_class(param_groups, **defaults)
    return ZeroRedundancyOptimizer(param_groups, optimizer_class=optimizer_class, **defaults)


def grad_total_norm(params: Iterable[nn.Parameter], norm_type: float = 2.0) -> torch.Tensor:
    """The global gradient norm as a plain tensor on the params' device (sharded grads are reduced over ranks)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return _total_norm(grads, norm_type)[0]


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scale gradients so their global norm is at most ``max_norm``; return the norm before clipping.

    Works for plain, DDP and FSDP2 (DTensor) gradients without a host sync (torchtitan's ``clip_grad_norm_``).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm, tensors = _total_norm(grads, norm_type)
    # torch.nn.utils.clip_grads_with_norm_'s arithmetic, on the gradients themselves (it takes parameters).
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    with torch.no_grad():
        for device, group in by_device.items():
            torch._foreach_mul_(group, coef.to(device))
    return norm


def _total_norm(grads: list[torch.Tensor], norm_type: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(global norm, the tensors to scale in place to clip). FSDP2's gradients are shards (``Shard`` DTensors on
    one 1-D mesh): their local tensors are normed as plain tensors and the per-rank norms combined with one
    all-reduce. That is what DTensor's own dispatch computes, without its per-op sharding bookkeeping, which cost
    more host time than the arithmetic (about 1.3 ms per step on a 196-tensor model)."""
    shards = _local_shards(grads)
    if shards is None:  # plain tensors, or DTensors this fast path does not cover: DTensor dispatch does it
        norm = torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=True)
        return (norm.full_tensor() if isinstance(norm, DTensor) else norm), grads
    local, group = shards
    norm = torch.nn.utils.get_total_norm(local, norm_type=norm_type, foreach=True)
    if group is not None:
        if math.isinf(norm_type):
            tdist.all_reduce(norm, op=tdist.ReduceOp.MAX, group=group)
        else:
            norm = norm.pow(norm_type)
            tdist.all_reduce(norm, op=tdist.ReduceOp.SUM, group=group)
            norm = norm.pow(1.0 / norm_type)
    return norm, local


def _local_shards(grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any] | None:
    """(local tensors, the process group to reduce over or None for one rank) when every gradient is a DTensor
    sharded on one 1-D mesh (FSDP2); None otherwise."""
    first = grads[0]
    if not isinstance(first, DTensor):
        return None
    mesh = first.device_mesh
    if mesh.ndim != 1:
        return None
    for g in grads:
        if not isinstance(g, DTensor) or g.device_mesh is not mesh or not g.placements[0].is_shard():
            return None
    return [g._local_tensor for g in grads], (mesh.get_group() if mesh.size() > 1 else None)
