"""Every attention implementation registered on this machine runs the shared conformance suite."""

from __future__ import annotations

import torch

from kernel import default_registry
from kernel.testing import AttentionConformance


class TestReference(AttentionConformance):
    impl = "reference"


class TestSdpa(AttentionConformance):
    impl = "sdpa"
    dtypes = (torch.float32, torch.bfloat16, torch.float16)


class TestFlash(AttentionConformance):
    """flash-attn is not installed here: every case must be refused with a reason (and run where installed)."""

    impl = "flash"


def test_every_registered_attention_implementation_has_a_conformance_class():
    covered = {c.impl for c in AttentionConformance.__subclasses__()}
    missing = set(default_registry().names("attention")) - covered
    assert not missing, f"add an AttentionConformance subclass for {sorted(missing)}"
