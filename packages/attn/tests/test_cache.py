"""Every cache passes the one conformance suite; the paged cache's block accounting and prefix caching are checked."""

from __future__ import annotations

import pytest
import torch
from cache_conformance import DH, KVH, N_LAYERS, KVCacheConformance, rand_kv

from attn.cache import BlockPool, FixedKVCache, PagedKVCache, SequenceError, StaticKVCache
from specs.errors import CacheFullError, ConfigError
from specs.presets import preset
from specs.protocols import PagedKVCache as PagedProtocol


class TestStaticConformance(KVCacheConformance):
    def make_cache(self, batch_size, max_seq_len):
        return StaticKVCache(n_layers=N_LAYERS, batch_size=batch_size, n_kv_heads=KVH, head_dim=DH,
                             max_seq_len=max_seq_len)


class TestFixedConformance(KVCacheConformance):
    """Device lengths, whole buffers: the fixed_shape capability."""

    def make_cache(self, batch_size, max_seq_len):
        return FixedKVCache(n_layers=N_LAYERS, batch_size=batch_size, n_kv_heads=KVH, head_dim=DH,
                            max_seq_len=max_seq_len)


class TestPagedConformance(KVCacheConformance):
    """Capped by max_seq_len; blocks of 4 so sequences straddle block boundaries."""

    def make_cache(self, batch_size, max_seq_len):
        return PagedKVCache(n_layers=N_LAYERS, n_kv_heads=KVH, head_dim=DH, block_size=4, batch_size=batch_size,
                            num_blocks=batch_size * -(-max_seq_len // 4) + 3, max_seq_len=max_seq_len)


class TestPagedPoolBoundConformance(KVCacheConformance):
    """No per-sequence cap: capacity is the pool itself (odd block size, exact pool)."""

    def make_cache(self, batch_size, max_seq_len):
        return PagedKVCache(n_layers=N_LAYERS, n_kv_heads=KVH, head_dim=DH, block_size=3, batch_size=batch_size,
                            num_blocks=batch_size * -(-max_seq_len // 3))


def paged(num_blocks=8, block_size=4, **kw) -> PagedKVCache:
    return PagedKVCache(n_layers=N_LAYERS, n_kv_heads=KVH, head_dim=DH, num_blocks=num_blocks,
                        block_size=block_size, **kw)


def fill(cache: PagedKVCache, seq_ids, T: int, seed: int = 0) -> list[torch.Tensor]:
    cache.set_active(seq_ids)
    ks = []
    for layer in range(N_LAYERS):
        k, v = rand_kv(len(seq_ids), T, seed + layer)
        cache.append(layer, k, v)
        ks.append(k)
    cache.advance(T)
    return ks


def test_paged_satisfies_paged_protocol():
    assert isinstance(paged(), PagedProtocol)


def test_rows_of_different_lengths_decode_together():
    cache = paged(num_blocks=16)
    cache.add_sequence("a")
    cache.add_sequence("b")
    ka = fill(cache, ["a"], 6, seed=1)
    kb = fill(cache, ["b"], 2, seed=2)
    cache.set_active(["b", "a"])
    k_new, v_new = rand_kv(2, 1, 3)
    k_all, _ = cache.append(0, k_new, v_new)
    assert k_all.shape == (2, KVH, 7, DH)
    torch.testing.assert_close(k_all[0, :, :3], torch.cat([kb[0][0], k_new[0]], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(k_all[1], torch.cat([ka[0][0], k_new[1]], dim=1), rtol=0, atol=0)
    assert cache.seq_lens.tolist() == [2, 6]


def test_reserve_is_all_or_nothing_and_free_returns_blocks():
    cache = paged(num_blocks=4, block_size=4)
    cache.add_sequence(0)
    cache.reserve(0, 9)  # 3 blocks
    assert len(cache.block_table(0)) == 3 and cache.num_free_blocks() == 1
    cache.add_sequence(1)
    with pytest.raises(CacheFullError, match="free"):
        cache.reserve(1, 5)  # needs 2 blocks, 1 free
    assert cache.block_table(1) == [] and cache.num_free_blocks() == 1
    cache.reserve(0, 12)  # already fits in 3 blocks: no-op
    assert len(cache.block_table(0)) == 3
    cache.free(0)
    assert cache.num_free_blocks() == 4
    with pytest.raises(SequenceError):
        cache.block_table(0)


def test_append_reserves_what_it_needs():
    cache = paged(num_blocks=2, block_size=4, batch_size=1)
    fill(cache, [0], 8)
    assert cache.num_free_blocks() == 0
    with pytest.raises(CacheFullError):
        cache.append(0, *rand_kv(1, 1, 0))


def test_prefix_blocks_are_shared_and_ref_counted():
    bs = 4
    cache = paged(num_blocks=10, block_size=bs)
    prompt = list(range(11))  # two full blocks + 3 tokens
    assert cache.add_sequence("a", prompt) == 0
    ka = fill(cache, ["a"], len(prompt), seed=5)
    assert cache.pool.num_cached() == 2
    # Same first 8 tokens, different tail: the two full blocks are hits.
    assert cache.add_sequence("b", prompt[:8] + [99, 98]) == 8
    table_a, table_b = cache.block_table("a"), cache.block_table("b")
    assert table_b == table_a[:2]
    assert all(cache.pool.ref_count(b) == 2 for b in table_b)
    cache.set_active(["b"])
    k_new, v_new = rand_kv(1, 2, 6)
    k_all, _ = cache.append(0, k_new, v_new)
    cache.advance(2)
    torch.testing.assert_close(k_all[0, :, :8], ka[0][0, :, :8], rtol=0, atol=0)  # shared keys, not recomputed
    cache.free("a")
    assert all(cache.pool.ref_count(b) == 1 for b in table_b)
    assert cache.pool.ref_count(table_a[2]) == 0


def test_a_fully_cached_prompt_still_computes_its_last_token():
    cache = paged(num_blocks=10, block_size=4)
    cache.add_sequence("a", list(range(8)))
    fill(cache, ["a"], 8)
    assert cache.add_sequence("b", list(range(8))) == 4  # < len(prompt): logits need the last token's forward
    assert cache.add_sequence("c", list(range(9))) == 8


def test_freed_prefixes_stay_cached_and_are_reused_lru():
    cache = paged(num_blocks=4, block_size=2)
    cache.add_sequence("a", [1, 2, 3])
    fill(cache, ["a"], 3)
    cache.add_sequence("b", [7, 8, 9])
    fill(cache, ["b"], 3)
    cache.free("a")
    cache.free("b")
    assert cache.num_free_blocks() == 4 and cache.pool.num_cached() == 2
    assert cache.add_sequence("a2", [1, 2, 5]) == 2  # a's block survived its free
    cache.free("a2")
    # Two allocations evict the least recently freed cached block first: b's prefix (a's was freed again later).
    cache.add_sequence("x")
    cache.reserve("x", 8)
    assert cache.num_free_blocks() == 0
    cache.free("x")
    assert cache.add_sequence("b2", [7, 8, 0]) == 0


def test_reset_prefix_cache_forgets_prefixes_and_keeps_sequences():
    cache = paged(num_blocks=6, block_size=2)
    cache.add_sequence("a", [1, 2, 3])
    fill(cache, ["a"], 3)
    cache.add_sequence("b", [7, 8, 9])
    fill(cache, ["b"], 3)
    cache.free("b")  # b's full block stays cached, unreferenced
    view = cache.decode_view(1, 8, preset("llama-debug"))  # takes the scratch block
    table = cache.block_table("a")
    assert cache.pool.num_cached() == 2 and cache.num_free_blocks() == 3
    assert cache.reset_prefix_cache() == 2
    assert cache.pool.num_cached() == 0 and cache.num_free_blocks() == 3  # b's block is plain free now
    assert cache.block_table("a") == table and cache.seq_len("a") == 3  # a keeps its blocks and length
    assert cache.add_sequence("a2", [1, 2, 5]) == 0 and cache.add_sequence("b2", [7, 8, 0]) == 0  # no stale hits
    assert view.scratch_block not in table and cache.pool.ref_count(view.scratch_block) == 1
    cache.free("a")
    assert cache.pool.ref_count(table[0]) == 0 and cache.pool.num_cached() == 0


def test_salted_prefixes_are_shared_only_within_their_salt():
    cache = paged(num_blocks=12, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    cache.add_sequence("a", prompt, salt="lora:1")
    fill(cache, ["a"], len(prompt))
    assert cache.add_sequence("plain", prompt) == 0  # unsalted: a's blocks are not its prefix
    assert cache.add_sequence("other", prompt, salt="lora:2") == 0
    assert cache.add_sequence("same", prompt, salt="lora:1") == 4
    assert cache.block_table("same")[:2] == cache.block_table("a")[:2]
    fill(cache, ["plain"], len(prompt))  # the unsalted chain is its own, and shared by its own kind
    assert cache.add_sequence("plain2", prompt) == 4
    assert cache.block_table("plain2")[:2] == cache.block_table("plain")[:2] != cache.block_table("a")[:2]
    with pytest.raises(ConfigError, match="salt: expected a str or None, got int"):
        cache.add_sequence("bad", prompt, salt=3)
    assert "bad" not in cache._seqs  # refused before registering


def test_prefix_caching_off_never_shares():
    cache = paged(num_blocks=8, block_size=2, prefix_caching=False)
    cache.add_sequence("a", [1, 2, 3])
    fill(cache, ["a"], 3)
    assert cache.add_sequence("b", [1, 2, 3]) == 0


def test_unknown_and_duplicate_sequences():
    cache = paged()
    cache.add_sequence("a")
    with pytest.raises(SequenceError, match="already"):
        cache.add_sequence("a")
    with pytest.raises(SequenceError, match="unknown sequence 'zz'"):
        cache.set_active(["zz"])
    with pytest.raises(SequenceError, match="duplicate"):
        cache.set_active(["a", "a"])
    with pytest.raises(ConfigError):
        paged(num_blocks=0)


def test_block_pool_never_double_allocates():
    pool = BlockPool(5)
    got = pool.allocate(3) + pool.allocate(2)
    assert sorted(got) == list(range(5))
    with pytest.raises(CacheFullError):
        pool.allocate(1)
    pool.release(got[:2])
    assert sorted(pool.allocate(2)) == sorted(got[:2])


def test_static_cache_casts_to_its_dtype():
    cache = StaticKVCache(n_layers=1, batch_size=1, n_kv_heads=KVH, head_dim=DH, max_seq_len=4, dtype=torch.bfloat16)
    k, _ = cache.append(0, *rand_kv(1, 2, 0))
    assert k.dtype == torch.bfloat16
