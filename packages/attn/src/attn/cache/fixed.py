"""A fixed-shape KV cache for CUDA graphs and ``torch.compile``: lengths live on the device, shapes never change.

gpt-fast's decode loop (``KVCache`` + ``input_pos``) in the shape of :class:`specs.protocols.KVCache`. Where
:class:`~attn.cache.static.StaticKVCache` keeps row lengths on the host and returns just the filled slots, this
cache keeps them in a device tensor and ``append`` writes with one indexed store and returns the *whole*
(B, KVH, max_seq_len, Dh) buffers, so a decode step has the same shapes and no host synchronisation at every token:
it can be captured once as a CUDA graph and replayed. The model masks slots at or past ``seq_lens[b] + T``
(``fixed_shape = True`` tells it to). The price is attention over all ``max_seq_len`` slots, so size the cache to
the longest sequence you will decode.

Capacity is the caller's to respect (checking it would need the lengths on the host, a sync per token): a decode
driver checks ``prompt + max_new_tokens <= max_seq_len`` once before it starts.

Shape legend: B batch rows, KVH key/value heads, T new tokens, L = max_seq_len slots, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attn.cache._checks import check_layer, check_positive
from kernel.reference import split_combine_in_kernel, unified_workspace
from specs.errors import ConfigError
from specs.tensor_spec import TensorSpec

_KV = TensorSpec("B", "KVH", "T", "Dh")


class FixedKVCache:
    """Per-layer (B, KVH, L, Dh) buffers and (B,) device lengths; every call keeps shapes and devices fixed."""

    fixed_shape = True
    # A decode step may leave the write of its new token to the attention kernel (``decode_attention(k_new=...)``
    # writes slot ``seq_lens[b]`` of ``read(layer)``'s buffers, exactly what ``append`` would) instead of appending.
    kernel_writes = True

    def __init__(self, *, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        check_positive(n_layers=n_layers, batch_size=batch_size, n_kv_heads=n_kv_heads, head_dim=head_dim,
                       max_seq_len=max_seq_len)
        self.n_layers, self.batch_size, self.max_seq_len = n_layers, batch_size, max_seq_len
        self.n_kv_heads, self.head_dim, self.dtype = n_kv_heads, head_dim, dtype
        self.device = torch.device(device)
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.lens = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        # the decode kernel's workspace under $LMSTACK_SPLIT_COMBINE=last: it then combines its slot splits in one
        # kernel with these (left zeroed)
        self.split_counters = (torch.zeros(batch_size * n_kv_heads, dtype=torch.int32, device=self.device)
                               if split_combine_in_kernel() else None)
        self._rows = torch.arange(batch_size, device=self.device)
        # the unified decode attention's per-layer accumulators (use_unified), None: decode steps attend as usual
        self.unified_ws: torch.Tensor | None = None
        # Mutated in place by a captured step: static addresses keep CUDA graphs (cudagraph trees) from copying
        # them or refusing to capture.
        for t in (*self.k_cache, *self.v_cache, self.lens, *([] if self.split_counters is None
                                                              else [self.split_counters])):
            torch._dynamo.mark_static_address(t)

    @property
    def seq_lens(self) -> torch.Tensor:
        """(B,) int64 on the cache's device: tokens committed per row (no host copy)."""
        return self.lens

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KVH, T, Dh) at slots ``lens[b] .. lens[b] + T - 1``; return the whole (B, KVH, L, Dh)."""
        check_layer(layer, self.n_layers)
        env = _KV.check(k, "k", B=self.batch_size, KVH=self.n_kv_heads, Dh=self.head_dim)
        _KV.check(v, "v", bound=env)
        T = env["T"]
        slots_BT = self.lens[:, None] + torch.arange(T, device=self.device)
        rows_BT = self._rows[:, None].expand(-1, T)
        # kc[rows, :, slots] addresses (B, T, KVH, Dh): the advanced indices come first (one index_put_).
        self.k_cache[layer][rows_BT, :, slots_BT] = k.transpose(1, 2).to(self.dtype)
        self.v_cache[layer][rows_BT, :, slots_BT] = v.transpose(1, 2).to(self.dtype)
        return self.k_cache[layer], self.v_cache[layer]

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole (B, KVH, L, Dh) buffers of ``layer``; slots at or past ``seq_lens`` hold stale values."""
        check_layer(layer, self.n_layers)
        return self.k_cache[layer], self.v_cache[layer]

    def advance(self, n_tokens: int) -> None:
        """Commit the ``n_tokens`` just appended (an in-place device add: graph-safe)."""
        self.lens.add_(n_tokens)

    def evict(self, rows: Sequence[int]) -> None:
        for r in rows:
            if not 0 <= r < self.batch_size:
                raise ConfigError("rows", f"row {r} out of range for a cache of {self.batch_size} rows")
        self.lens[list(rows)] = 0

    def use_unified(self, n_heads: int | None) -> None:
        """Decode steps over this cache attend with the unified-shift decode attention (``n_heads`` query heads), the
        output projection reading its accumulators: a zeroed (n_layers, B, W) fp32 workspace
        (``kernel.reference.unified_workspace``) for them, at a static address (a captured step writes it). None
        drops it (plain decode attention). A model of one layer cannot (the calls zero each other's slots)."""
        if n_heads is None:
            self.unified_ws = None
            return
        check_positive(n_heads=n_heads)
        self.unified_ws = unified_workspace(self.n_layers, self.batch_size, n_heads, self.head_dim, self.device)
        torch._dynamo.mark_static_address(self.unified_ws)

    def reset(self) -> None:
        self.lens.zero_()
        if self.unified_ws is not None:  # a step cut short may have left a layer's slot unzeroed
            self.unified_ws.zero_()

    def __repr__(self) -> str:
        return (f"FixedKVCache(n_layers={self.n_layers}, batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, dtype={self.dtype})")
