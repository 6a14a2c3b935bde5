"""Fixtures for the train tests (helpers live in train_testing.py, importable by torchrun workers too)."""

from __future__ import annotations

import logging

import pytest
import torch
from train_testing import TinyLM


@pytest.fixture(autouse=True)
def _quiet_and_threads(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="train")
    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield  # train.deterministic flips a process-wide torch switch; give the next test the state it had
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def tiny() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()
