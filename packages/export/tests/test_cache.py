import pytest
import torch

from export.cache import PastKVCache
from export.errors import ExportError
from specs.protocols import KVCache


def _past(B=2, S=3, layers=2):
    return [(torch.randn(B, 2, S, 4), torch.randn(B, 2, S, 4)) for _ in range(layers)]


def test_conforms_to_specs_protocol():
    assert isinstance(PastKVCache(_past(), new_tokens=1), KVCache)


@pytest.mark.parametrize("S", [0, 3])
def test_append_concatenates_and_advance_commits(S):
    past = _past(S=S)
    cache = PastKVCache(past, new_tokens=5)
    assert cache.seq_lens.tolist() == [S, S]
    assert cache.max_seq_len == S + 5 and cache.fixed_shape
    k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    for layer in range(2):
        k_all, v_all = cache.append(layer, k, v)
        assert k_all.shape == (2, 2, S + 5, 4)
        torch.testing.assert_close(k_all[:, :, :S], past[layer][0], rtol=0, atol=0)
        torch.testing.assert_close(v_all[:, :, S:], v, rtol=0, atol=0)
    assert torch.equal(cache.read(0)[0], past[0][0])  # nothing committed before advance
    cache.advance(5)
    assert cache.seq_lens.tolist() == [S + 5, S + 5]
    presents = cache.presents()
    assert len(presents) == 4 and presents[2].shape == (2, 2, S + 5, 4)


def test_model_that_skips_the_cache_is_caught():
    cache = PastKVCache(_past(), new_tokens=1)
    with pytest.raises(ExportError, match="advance"):
        cache.presents()
    cache.append(0, torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(ExportError, match="without appending to layers \\[1\\]"):
        cache.advance(1)


def test_evict_and_reset_are_refused():
    cache = PastKVCache(_past(), new_tokens=1)
    with pytest.raises(ExportError):
        cache.evict([0])
    with pytest.raises(ExportError):
        cache.reset()
