"""Shared test setup: tiny models run single-threaded.

On a small shared CI machine, intra-op threads that compete with other processes make tiny matmuls ~10x slower;
the models here are too small to gain anything from threads. The previous setting is restored after each module.
"""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run on CPU through Triton's interpreter when there is no GPU (chosen when a kernel is decorated,
# so before any kernel.triton module is imported)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
