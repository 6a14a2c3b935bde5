"""PagedDecodeView: the fixed-shape decode batch over a paged cache's pools (what the engine's CUDA graphs replay)."""

from __future__ import annotations

import pytest
import torch

from attn.cache import PagedKVCache
from kernel import reference as ref
from specs.errors import ConfigError, ShapeError
from specs.presets import preset

CFG = preset("llama-debug")


def _cache(num_blocks=12, block_size=4):
    return PagedKVCache(n_layers=2, n_kv_heads=2, head_dim=8, num_blocks=num_blocks, block_size=block_size)


def _seq(cache, sid, n, g):
    cache.add_sequence(sid)
    cache.set_active([sid])
    k = torch.randn(1, 2, n, 8, generator=g)
    for layer in range(cache.n_layers):
        cache.append(layer, k, k + 1)
    cache.advance(n)


def test_load_append_commit_and_attention_match_the_paged_cache():
    g = torch.Generator().manual_seed(0)
    cache = _cache()
    _seq(cache, "a", 5, g)
    _seq(cache, "b", 8, g)  # exactly two full blocks: its next token opens a third
    view = cache.decode_view(3, 16, CFG)
    for s in ("a", "b"):
        cache.reserve(s, 1)
    view.load(["b", "a"])
    assert view.lens.tolist() == [8, 5, 0] and view.max_seq_len == 16
    bs = cache.block_size
    want_slots = [cache.block_table(s)[n // bs] * bs + n % bs for s, n in (("b", 8), ("a", 5))]
    assert view.write_slots[:2].tolist() == want_slots
    scratch = view.scratch_block
    assert scratch not in cache.block_table("a") + cache.block_table("b")
    assert view.write_slots[2].item() == scratch * bs and view.block_table[2, 0].item() == scratch  # padding row
    k_new = torch.randn(3, 2, 1, 8, generator=g)
    kp, vp = view.append(0, k_new, k_new)
    assert kp is cache.k_pool[0]
    torch.testing.assert_close(kp[want_slots[0]], k_new[0, :, 0])
    # attention through the block table equals attention over the paged cache's own gathered rows
    q = torch.randn(3, 4, 8, generator=g)
    out = ref.decode_attention(q, kp, vp, view.lens + 1, block_table=view.block_table, block_size=bs)
    view.commit()
    assert cache.seq_len("b") == 9 and cache.seq_len("a") == 6
    cache.set_active(["b", "a"])
    kk, vv = cache.read(0)  # (2, KVH, 9, Dh), row "a" padded past its 6 slots
    want = ref.decode_attention(q[:2], kk, vv, torch.tensor([9, 6]))
    torch.testing.assert_close(out[:2], want)


def test_view_errors_name_what_is_wrong():
    g = torch.Generator().manual_seed(1)
    cache = _cache()
    _seq(cache, "a", 4, g)
    view = cache.decode_view(1, 8, CFG)
    with pytest.raises(ShapeError, match="needs room reserved"):
        view.load(["a"])  # 4 tokens fill its block; the next one has no slot yet
    cache.reserve("a", 1)
    with pytest.raises(ShapeError, match="do not fit a decode view of 1 rows"):
        view.load(["a", "a"])
    with pytest.raises(ShapeError, match="one token for each of its 1 rows"):
        view.append(0, torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))
    with pytest.raises(ConfigError, match="need a mask"):
        cache.decode_view(1, 8, preset("llama-debug", pos_encoding="alibi"))
    with pytest.raises(ConfigError, match="dynamic-NTK"):
        cache.decode_view(1, 8, preset("llama-debug", rope_scaling={"type": "dynamic_ntk", "factor": 2.0,
                                                                     "original_max_seq_len": 64}))


def test_views_share_one_scratch_block_until_reset():
    cache = _cache(num_blocks=4)
    v1, v2 = cache.decode_view(1, 8, CFG), cache.decode_view(2, 8, CFG)
    assert v1.scratch_block == v2.scratch_block and cache.num_free_blocks() == 3
    cache.reset()
    assert cache.num_free_blocks() == 4
