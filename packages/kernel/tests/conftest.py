import os
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU through Triton's interpreter when there is no GPU. It is chosen when a kernel is
# decorated, so this must happen before any kernel.triton module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # the fake_plugin package


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch seed, so a test that draws unseeded inputs does not depend on how many
    numbers the tests before it (hypothesis's among them) happened to draw."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    from kernel import default_registry

    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
