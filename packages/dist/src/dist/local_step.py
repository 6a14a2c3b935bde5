"""Optimizer steps of FSDP2-sharded parameters on their local tensors: ``with local_shards(optimizer): opt.step()``.

Why: FSDP2 parameters, their gradients and their optimizer state are ``DTensor`` shards. An optimizer step on
DTensors routes every foreach / fused kernel through DTensor's ``__torch_dispatch__`` (sharding propagation over
lists of ~200 tensors), which costs several times the arithmetic on the host: measured 2.6 ms against 0.64 ms for
the same fused AdamW step on a 196-tensor model (packages/train/benchmarks/bench_step_overhead.py), and a known
FSDP2 cost (pytorch/pytorch#134191). Element-wise optimizers (AdamW, SGD, Lion: every update is per element)
compute exactly the same numbers on each rank's local shard, which is all DTensor dispatch does for them.

Inside the context, each sharded parameter in ``optimizer.param_groups`` is replaced by its local tensor (with the
local gradient as ``.grad``) and ``optimizer.state`` by local views of the same state tensors; the step updates
them in place. On exit the parameters come back, and state the step created or replaced (the first step's
moments) is stored as DTensors sharded like their parameter, so ``state_dict``, DCP checkpoints and the next steps
see what a DTensor step would have left. Not for optimizers that mix elements across a tensor (Shampoo, Muon):
their math on a shard differs from the math on the whole tensor.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.tensor import DTensor


def _shard_mesh(p: torch.Tensor) -> bool:
    return p.device_mesh.ndim == 1 and p.placements[0].is_shard()


@contextlib.contextmanager
def local_shards(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Run the optimizer's step on local shards (see the module docstring); a no-op without sharded params."""
    groups = optimizer.param_groups
    if not any(isinstance(p, DTensor) and _shard_mesh(p) for group in groups for p in group["params"][:1]):
        yield
        return
    originals = [group["params"] for group in groups]
    state = optimizer.state
    local_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    swapped: list[tuple[DTensor, torch.Tensor, dict[str, Any] | None]] = []  # (param, its local tensor, its state)
    ok_meshes: set[int] = set()  # ids of the 1-D meshes seen with Shard placements (checked once each)
    for group, params in zip(groups, originals):
        local_params = []
        for p in params:
            st = state.get(p)
            if not isinstance(p, DTensor) or (id(p.device_mesh) not in ok_meshes and not _shard_mesh(p)):
                local_params.append(p)
                if st is not None:
                    local_state[p] = st
                continue
            ok_meshes.add(id(p.device_mesh))
            local = p._local_tensor
            grad = p.grad
            local.grad = None if grad is None else grad._local_tensor
            if st is not None:
                local_state[local] = {k: (v._local_tensor if isinstance(v, DTensor) else v) for k, v in st.items()}
            swapped.append((p, local, st))
            local_params.append(local)
        group["params"] = local_params
    optimizer.state = local_state
    try:
        yield
    finally:
        optimizer.state = state
        for group, params in zip(groups, originals):
            group["params"] = params
        with torch.no_grad():
            for p, local, st in swapped:
                local.grad = None
                new = local_state.get(local)
                if not new:
                    continue
                if st is None:
                    st = state[p]  # the first step: the optimizer just created this parameter's state
                for k, v in new.items():
                    old = st.get(k)
                    if v is not old and not (isinstance(old, DTensor) and old._local_tensor is v):
                        st[k] = _like(v, p, local)  # created or replaced by the step: keep it as DTensor would


def _like(v: Any, p: DTensor, local: torch.Tensor) -> Any:
    """``v`` as a DTensor sharded like ``p`` when it has the local shard's shape (moments, momentum buffers);
    other values (step counters) as they are, as a DTensor step leaves them."""
    if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == local.shape and v.dim() > 0:
        return DTensor.from_local(v, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
    return v
