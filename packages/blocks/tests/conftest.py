"""Shared test setup: tiny models run single-threaded.

On a small shared CI machine, intra-op threads that compete with other processes make tiny matmuls ~10x slower;
the models here are too small to gain anything from threads. The previous setting is restored after each module.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
