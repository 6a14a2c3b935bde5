"""Fuse sibling ``nn.Linear`` layers that read the same input into one (q/k/v, gate/up), keeping checkpoint keys.

Batch-1 decode is bound by weight bytes and kernel count: three small GEMVs (q, k, v; k and v are 1/8 of q under GQA)
leave most of the GPU idle while one GEMV over the concatenated weight streams at full bandwidth. vLLM
(``QKVParallelLinear``, ``MergedColumnParallelLinear``) and gpt-fast (``wqkv``) fuse the same way.

:func:`fuse_linears` replaces ``module.<names>`` by ``module.<fused_name>`` whose output is theirs concatenated in
order; :func:`split_output` cuts it back. The module's ``state_dict`` still holds the original keys (the fused
weight and bias are split on save and concatenated on load), so checkpoints, Hugging Face conversion and
``load_state_dict`` of unfused weights are unaffected. Outputs are identical up to GEMM round-off (a wider matmul
may pick another kernel). The split entries are copies, not views of the parameters: a loader that writes into a
state dict in place (``torch.distributed.checkpoint.load``) must finish with ``load_state_dict`` (as
``set_model_state_dict`` does). Fusing is meant for inference (FastGenerator and the serving engine do it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from specs.errors import ConfigError

_ATTR = "_fused_linears"  # module attribute: {fused_name: (names, out_features)}


def fuse_linears(module: nn.Module, names: Sequence[str], fused_name: str) -> nn.Linear:
    """Replace the Linears ``names`` of ``module`` (same input width, all with or all without bias) by one."""
    linears = [getattr(module, n, None) for n in names]
    if any(type(m) is not nn.Linear for m in linears):
        raise ConfigError("fuse_linears", f"{type(module).__name__}.{names} must all be plain nn.Linear layers, got "
                          f"{[type(m).__name__ for m in linears]}")
    ins = {m.in_features for m in linears}
    has_bias = {m.bias is not None for m in linears}
    if len(ins) != 1 or len(has_bias) != 1:
        raise ConfigError("fuse_linears", f"{names} must share in_features and bias, got in_features={sorted(ins)}")
    w0 = linears[0].weight
    fused = nn.Linear(ins.pop(), sum(m.out_features for m in linears), bias=has_bias.pop(), device=w0.device,
                      dtype=w0.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in linears]))
    fused.weight.requires_grad_(w0.requires_grad)
    if fused.bias is not None:
        fused.bias.requires_grad_(w0.requires_grad)
    for n in names:
        delattr(module, n)
    setattr(module, fused_name, fused)
    if not hasattr(module, _ATTR):
        setattr(module, _ATTR, {})
        module._register_state_dict_hook(_split_on_save)
        module.register_load_state_dict_pre_hook(_concat_on_load)
    getattr(module, _ATTR)[fused_name] = (tuple(names), tuple(m.out_features for m in linears))
    return fused


def split_output(module: nn.Module, fused_name: str, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The per-layer outputs of a fused Linear's output ``y`` (..., sum of widths): views, no copy."""
    return y.split(list(getattr(module, _ATTR)[fused_name][1]), dim=-1)


def is_fused(module: nn.Module, fused_name: str) -> bool:
    return fused_name in getattr(module, _ATTR, {})


def _split_on_save(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for fused_name, (names, widths) in getattr(module, _ATTR).items():
        for param in ("weight", "bias"):
            t = state_dict.pop(f"{prefix}{fused_name}.{param}", None)
            if t is None:
                continue
            # clones: checkpoint writers (safetensors) refuse tensors that share storage
            for n, part in zip(names, t.split(list(widths), dim=0)):
                state_dict[f"{prefix}{n}.{param}"] = part.clone()


def _concat_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for fused_name, (names, _) in getattr(module, _ATTR).items():
        for param in ("weight", "bias"):
            keys = [f"{prefix}{n}.{param}" for n in names]
            if all(k in state_dict for k in keys):
                state_dict[f"{prefix}{fused_name}.{param}"] = torch.cat([state_dict.pop(k) for k in keys])
