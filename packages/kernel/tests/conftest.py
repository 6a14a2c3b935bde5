import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fake_plugin package


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    from kernel import default_registry

    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
