"""Fixtures for the dist tests (helpers live in dist_testing.py, importable by the torchrun worker too)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)
