"""specs.sources: ``SCHEME:REF`` model references resolved by ``lmstack.sources`` plugins; paths stay paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from specs.errors import PluginError
from specs.sources import local_path, source_name, split_source


def test_sources_and_paths(tmp_path):
    calls = []

    def fake(ref):
        calls.append(ref)
        return tmp_path / ref.replace("@", "-")

    assert local_path("fake:tiny@production", extra={"fake": fake}) == tmp_path / "tiny-production"
    assert calls == ["tiny@production"]
    odd = tmp_path / "fake:dir"  # an existing path is itself, colon or not
    odd.mkdir()
    assert local_path(str(odd), extra={"fake": fake}) == odd and calls == ["tiny@production"]
    for path in ("runs/x", "C:/models/x", "./a:b", "/abs/path:x"):
        assert split_source(path) is None and local_path(path) == Path(path)
    assert source_name("fake:tiny@production") == "tiny@production"
    assert source_name(str(odd)) == "fake:dir"


def test_an_unknown_source_lists_the_installed(tmp_path):
    with pytest.raises(PluginError, match=r"'nope:x' is neither an existing path nor a model source .*installed "
                                          r"sources: .*fake"):
        local_path("nope:x", extra={"fake": lambda ref: tmp_path})
