"""Every attention implementation registered on this machine runs the shared conformance suite."""

from __future__ import annotations

import os

import torch

from kernel.builtin import builtin_implementations
from kernel.testing import AttentionConformance

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()


class TestReference(AttentionConformance):
    impl = "reference"


class TestSdpa(AttentionConformance):
    impl = "sdpa"
    dtypes = (torch.float32, torch.bfloat16, torch.float16)


class TestTriton(AttentionConformance):
    """The Triton flash-attention kernel; on a CPU-only machine through TRITON_INTERPRET=1 (see conftest)."""

    impl = "triton"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    request_device = "cuda"
    capability = (9, 0)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    if INTERPRETED:
        # Triton's interpreter converts fp32 -> bf16 by truncation, not round-to-nearest-even as GPUs do (see
        # test_triton_ops.py::test_interpreter_bf16_conversion_truncates), doubling the rounding error per cast.
        lowp_factor_overrides = {torch.bfloat16: 4.0}


class TestFlash(AttentionConformance):
    """flash-attn is not installed here: every case must be refused with a reason (and run where installed)."""

    impl = "flash"


def test_every_builtin_attention_implementation_has_a_conformance_class():
    """lmstack's own; a plugin's (an ``lmstack.kernels`` entry point) subclasses the suite in its own tests, as
    lmstack-interpret's recording attention does."""
    covered = {c.impl for c in AttentionConformance.__subclasses__()}
    missing = {i.name for i in builtin_implementations() if i.op == "attention"} - covered
    assert not missing, f"add an AttentionConformance subclass for {sorted(missing)}"
