"""Find a model's repeated transformer blocks from outside, and wrap them for activation checkpointing or compile.

Strategies are applied per block (torchtitan's ``apply_ac``/``apply_compile``/``apply_fsdp``), so they need the
blocks without the model naming them: a block list is an ``nn.ModuleList`` whose children all share one class,
and the model's blocks are the such list holding the most parameters (``layers`` in Llama, ``h`` in GPT-2).
Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") recomputes each
block's activations in backward: ``checkpoint_wrapper`` replaces the block in its list; state-dict keys are
unchanged because the wrapper strips its own prefix.

:func:`eager_warmup` runs a compiled model's first call eagerly, so the model's kernel choices
(``kernel.resolve``) are made before dynamo traces the blocks: a first resolution inside a compiled region is a
graph break that the compiled code then keeps (a GPT-2 block became 6 graphs instead of 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)


def find_block_list(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of same-class children with the most parameters, or None."""
    best, best_n = None, -1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(_unwrap(child)) for child in module}
        if len(kinds) != 1:
            continue
        n = sum(p.numel() for p in module.parameters())
        if n > best_n:
            best, best_n = module, n
    return best


def find_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = find_block_list(model)
    return list(blocks) if blocks is not None else []


def _unwrap(module: nn.Module) -> nn.Module:
    return module._checkpoint_wrapped_module if isinstance(module, CheckpointWrapper) else module


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every block in ``checkpoint_wrapper`` (non-reentrant). Returns how many blocks were wrapped."""
    blocks = find_block_list(model)
    if blocks is None:
        raise ValueError(f"activation checkpointing: {type(model).__name__} has no nn.ModuleList of repeated "
                         "blocks to wrap")
    n = 0
    for i, block in enumerate(blocks):
        if not isinstance(block, CheckpointWrapper):
            blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            n += 1
    return n


def has_activation_checkpointing(model: nn.Module) -> bool:
    return any(isinstance(m, CheckpointWrapper) for m in model.modules())


def compile_blocks(model: nn.Module, **compile_kwargs: object) -> None:
    """``torch.compile`` each block in place (per-block compile keeps compile time flat in depth and composes
    with FSDP2's per-block hooks); a model without a block list is compiled whole, in place."""
    blocks = find_blocks(model)
    for block in blocks or [model]:
        block.compile(**compile_kwargs)


def compile_whole(model: nn.Module, **compile_kwargs: object) -> None:
    """``torch.compile`` the whole module in place: one graph from embedding to loss, so inductor fuses across the
    block boundaries and the loss head and a step pays one compiled call instead of one per block. For a module
    without per-block hooks (no DDP/FSDP wrapper); compile time grows with depth."""
    model.compile(**compile_kwargs)


def is_compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def eager_warmup(module: nn.Module, *args: object, device: torch.device | None = None, **kwargs: object) -> None:
    """Call ``module(*args, **kwargs)`` once with every ``torch.compile`` region forced eager; discard the result.

    Why: model code picks its kernels through ``kernel.resolve``, which caches each choice by its request; a
    request first met while dynamo traces is a graph break that stays in the compiled code for good. One eager
    call with the real inputs (same dtype, grad mode and batch fields) resolves the eager and the compiled choice
    of every request, so the blocks then compile into one graph each. The RNG state (CPU and ``device``) is
    restored, so dropout in the warm-up draws nothing from the run's stream; nothing else is changed (no backward
    runs, so parameters, gradients and optimizer state are untouched).
    """
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.compiler.set_stance("force_eager"):
        module(*args, **kwargs)
