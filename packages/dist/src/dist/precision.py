"""Precision names (``fp32 | bf16 | fp16``) to torch dtypes, and whether a device can run them.

Asking for bf16 on a GPU without bf16 tensor cores (before Ampere, e.g. V100/T4) fails here with a clear message
instead of a slow emulated run or an obscure kernel error. CPUs run bf16 and fp16 autocast (slowly where the ISA
lacks native support, but correctly), so CPU requests are accepted.
"""

from __future__ import annotations

import torch

from specs.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise ConfigError("precision", f"unknown precision {precision!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[precision]


def why_unsupported(precision: str, device: torch.device) -> str | None:
    """A sentence saying why ``device`` cannot train in ``precision``, or None when it can."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(device)
            cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
            return (f"bf16 needs a GPU with compute capability >= 8.0 (Ampere or newer); {name} is {cap}. "
                    "Use precision fp16 (with loss scaling) or fp32")
        return None
    if device.type == "mps" and precision == "bf16":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError) as exc:
            return f"this MPS device/macOS does not support bf16 ({exc}); use fp16 or fp32"
    return None


def check_precision(precision: str, device: torch.device, field: str = "train.precision") -> torch.dtype:
    """The dtype for ``precision``, or a ConfigError naming ``field`` when ``device`` cannot run it."""
    dtype = dtype_of(precision)
    reason = why_unsupported(precision, device)
    if reason is not None:
        raise ConfigError(field, reason)
    return dtype
