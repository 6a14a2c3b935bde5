"""What the kernels' launch heuristics need to know about the GPU, as constants torch.compile can trace."""

from __future__ import annotations

import torch

# Off CUDA (Triton's interpreter in the CPU tests) the heuristics see a small pretend GPU, so split paths run too.
INTERPRETER_SMS = 8


@torch.compiler.assume_constant_result  # a constant to dynamo: no graph break in a compiled decode step
def _cuda_info(index: int) -> tuple[int, str]:
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, props.name


def device_info(x: torch.Tensor) -> tuple[int, str]:
    """(SM count, card name) of x's device; (INTERPRETER_SMS, "cpu") when x is not on CUDA."""
    if not x.is_cuda:
        return INTERPRETER_SMS, "cpu"
    return _cuda_info(x.device.index if x.device.index is not None else torch.cuda.current_device())


@torch.compiler.assume_constant_result
def _cuda_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_capable(x: torch.Tensor) -> bool:
    """Whether kernels on x's device can use programmatic dependent launch (CUDA, compute capability 9.0+)."""
    if not x.is_cuda:
        return False
    return _cuda_major(x.device.index if x.device.index is not None else torch.cuda.current_device()) >= 9
