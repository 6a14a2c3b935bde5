"""The one KVCache conformance suite: every cache implementation subclasses it with a ``make_cache`` factory.

It checks the specs KVCache Protocol's contract (append returns the whole history, advance commits, rows have their
own lengths, evict/reset forget, capacity errors are CacheFullError, bad shapes are ShapeError) and, with
hypothesis, that any sequence of appends, advances and evictions reads back exactly what a list-per-row reference
holds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.errors import CacheFullError, ShapeError
from specs.protocols import KVCache

N_LAYERS, KVH, DH = 2, 2, 4


def rand_kv(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, KVH, T, DH, generator=g), torch.randn(B, KVH, T, DH, generator=g)


class KVCacheConformance:
    """Subclass with ``make_cache(batch_size, max_seq_len)`` returning an empty cache of N_LAYERS, KVH, DH.

    Caches with the ``fixed_shape`` capability return whole buffers (compared up to the filled slots here) and
    validate nothing on the host (no capacity or advance checks: those would cost a sync per token), so the tests
    of host-side validation skip for them.
    """

    def make_cache(self, batch_size: int, max_seq_len: int) -> KVCache:
        raise NotImplementedError

    @staticmethod
    def filled(cache: KVCache, kv: torch.Tensor, S: int) -> torch.Tensor:
        """The first S slots of what append/read returned (fixed-shape caches return every slot)."""
        if getattr(cache, "fixed_shape", False):
            return kv[:, :, :S]
        assert kv.shape[2] == S, f"expected {S} slots, got {kv.shape[2]}"
        return kv

    @staticmethod
    def needs_host_checks(cache: KVCache) -> None:
        if getattr(cache, "fixed_shape", False):
            pytest.skip("fixed-shape caches validate nothing on the host (no sync per token)")

    def step(self, cache: KVCache, B: int, T: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
        """One forward's worth of appends (every layer), then advance; returns what each layer got back."""
        out = []
        for layer in range(N_LAYERS):
            k, v = rand_kv(B, T, seed * 31 + layer)
            out.append((k, v, *cache.append(layer, k, v)))
        cache.advance(T)
        return out

    def test_satisfies_protocol(self):
        cache = self.make_cache(2, 16)
        assert isinstance(cache, KVCache)
        assert cache.n_layers == N_LAYERS

    def test_starts_empty(self):
        cache = self.make_cache(3, 16)
        assert cache.seq_lens.tolist() == [0, 0, 0]
        k, v = cache.read(0)
        assert self.filled(cache, k, 0).shape == (3, KVH, 0, DH) and self.filled(cache, v, 0).shape == (3, KVH, 0, DH)

    def test_append_returns_whole_history(self):
        cache = self.make_cache(2, 32)
        first = self.step(cache, 2, 5, seed=1)
        second = self.step(cache, 2, 3, seed=2)
        assert cache.seq_lens.tolist() == [8, 8]
        for layer in range(N_LAYERS):
            k1, v1 = first[layer][:2]
            k2, v2, k_all, v_all = second[layer]
            k_all, v_all = self.filled(cache, k_all, 8), self.filled(cache, v_all, 8)
            torch.testing.assert_close(k_all, torch.cat([k1, k2], dim=2), rtol=0, atol=0)
            torch.testing.assert_close(v_all, torch.cat([v1, v2], dim=2), rtol=0, atol=0)
            k_read, v_read = cache.read(layer)
            torch.testing.assert_close(self.filled(cache, k_read, 8), k_all, rtol=0, atol=0)
            torch.testing.assert_close(self.filled(cache, v_read, 8), v_all, rtol=0, atol=0)

    def test_layers_are_independent(self):
        cache = self.make_cache(1, 8)
        got = self.step(cache, 1, 4, seed=3)
        assert not torch.equal(cache.read(0)[0], cache.read(1)[0])
        torch.testing.assert_close(self.filled(cache, cache.read(1)[0], 4), got[1][0], rtol=0, atol=0)

    def test_read_excludes_uncommitted_tokens(self):
        cache = self.make_cache(1, 8)
        self.needs_host_checks(cache)
        self.step(cache, 1, 2, seed=4)
        k, v = rand_kv(1, 3, 5)
        k_all, _ = cache.append(0, k, v)
        assert k_all.shape[2] == 5 and cache.read(0)[0].shape[2] == 2 and cache.seq_lens.tolist() == [2]

    def test_advance_must_match_appended_tokens(self):
        cache = self.make_cache(1, 8)
        self.needs_host_checks(cache)
        with pytest.raises(ShapeError):
            cache.advance(1)
        k, v = rand_kv(1, 2, 6)
        cache.append(0, k, v)
        with pytest.raises(ShapeError):
            cache.advance(3)

    def test_layers_of_one_forward_append_the_same_length(self):
        cache = self.make_cache(1, 8)
        self.needs_host_checks(cache)
        cache.append(0, *rand_kv(1, 2, 7))
        with pytest.raises(ShapeError, match="T="):
            cache.append(1, *rand_kv(1, 3, 8))

    def test_bad_shapes_are_named(self):
        cache = self.make_cache(2, 8)
        with pytest.raises(ShapeError, match="KVH"):
            cache.append(0, torch.zeros(2, KVH + 1, 1, DH), torch.zeros(2, KVH + 1, 1, DH))
        with pytest.raises(ShapeError, match="B"):
            cache.append(0, torch.zeros(3, KVH, 1, DH), torch.zeros(3, KVH, 1, DH))

    def test_evicted_row_restarts_while_others_continue(self):
        cache = self.make_cache(2, 32)
        first = self.step(cache, 2, 4, seed=9)
        cache.evict([0])
        assert cache.seq_lens.tolist() == [0, 4]
        second = self.step(cache, 2, 3, seed=10)
        assert cache.seq_lens.tolist() == [3, 7]
        for layer in range(N_LAYERS):
            k_new, _, k_all, _ = second[layer]
            k_all = self.filled(cache, k_all, 7)
            torch.testing.assert_close(k_all[0, :, :3], k_new[0], rtol=0, atol=0)
            torch.testing.assert_close(k_all[1], torch.cat([first[layer][0][1], k_new[1]], dim=1), rtol=0, atol=0)

    def test_reset_forgets_everything(self):
        cache = self.make_cache(2, 16)
        self.step(cache, 2, 5, seed=11)
        cache.reset()
        assert cache.seq_lens.tolist() == [0, 0]
        got = self.step(cache, 2, 2, seed=12)
        torch.testing.assert_close(self.filled(cache, got[0][2], 2), got[0][0], rtol=0, atol=0)

    def test_overflow_is_cache_full(self):
        cache = self.make_cache(1, 8)
        self.needs_host_checks(cache)
        self.step(cache, 1, 6, seed=13)
        with pytest.raises(CacheFullError):
            cache.append(0, *rand_kv(1, 8, 14))

    def test_random_history_matches_reference(self):
        # @given on an inner function: each subclass runs its own hypothesis test (one executor per test).
        @settings(max_examples=25, deadline=None)
        @given(ops=st.lists(st.one_of(st.integers(1, 5), st.sampled_from(["evict0", "evict1"])), min_size=1,
                            max_size=8),
               seed=st.integers(0, 1000))
        def check(ops, seed):
            self.check_random_history(ops, seed)

        check()

    def check_random_history(self, ops, seed):
        B = 2
        cache = self.make_cache(B, 64)
        ref: list[list[list[torch.Tensor]]] = [[[] for _ in range(B)] for _ in range(N_LAYERS)]  # [layer][row]
        for i, op in enumerate(ops):
            if isinstance(op, str):
                row = int(op[-1])
                cache.evict([row])
                for layer in range(N_LAYERS):
                    ref[layer][row] = []
                continue
            if max(sum(t.shape[1] for t in ref[0][b]) for b in range(B)) + op > 64:
                continue
            got = self.step(cache, B, op, seed=seed + i)
            S = max(sum(t.shape[1] for t in ref[0][b]) for b in range(B)) + op
            for layer, (k, _, k_all, _) in enumerate(got):
                k_all = self.filled(cache, k_all, S)
                for b in range(B):
                    ref[layer][b].append(k[b])
                    want = torch.cat(ref[layer][b], dim=1)
                    torch.testing.assert_close(k_all[b, :, :want.shape[1]], want, rtol=0, atol=0)
        lens = [sum(t.shape[1] for t in ref[0][b]) for b in range(B)]
        assert cache.seq_lens.tolist() == lens
        for layer in range(N_LAYERS):
            k_read = self.filled(cache, cache.read(layer)[0], max(lens))
            for b in range(B):
                if lens[b]:
                    torch.testing.assert_close(k_read[b, :, :lens[b]], torch.cat(ref[layer][b], dim=1), rtol=0, atol=0)

    def test_a_failed_forward_is_dropped_by_the_next_one(self):
        cache = self.make_cache(1, 16)
        self.step(cache, 1, 3, seed=20)
        cache.append(0, *rand_kv(1, 2, 21))  # a forward that died after layer 0: never advanced
        got = self.step(cache, 1, 4, seed=22)
        assert cache.seq_lens.tolist() == [7]
        k_all = self.filled(cache, got[1][2], 7)
        torch.testing.assert_close(k_all[:, :, 3:], got[1][0], rtol=0, atol=0)
