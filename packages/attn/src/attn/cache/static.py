"""A contiguous, preallocated KV cache: one (B, KVH, max_seq_len, Dh) buffer per layer (gpt-fast's KVCache).

Each batch row has its own length, so rows can be evicted and refilled while others keep decoding. A forward over
T new tokens writes row b's keys at slots ``seq_lens[b] .. seq_lens[b] + T - 1``; when every row has the same
length (the common case) that is one slice assignment, otherwise one scatter. Implements
:class:`specs.protocols.KVCache`.

Shape legend: B batch rows, KVH key/value heads, T new tokens, S cached slots, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attn.cache._checks import check_layer, check_positive
from specs.errors import CacheFullError, ConfigError, ShapeError
from specs.tensor_spec import TensorSpec

_KV = TensorSpec("B", "KVH", "T", "Dh")


class StaticKVCache:
    """Preallocated per-layer key/value buffers for ``batch_size`` rows of up to ``max_seq_len`` tokens."""

    def __init__(self, *, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        check_positive(n_layers=n_layers, batch_size=batch_size, n_kv_heads=n_kv_heads, head_dim=head_dim,
                       max_seq_len=max_seq_len)
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self._lens = [0] * batch_size  # host-side lengths: no device sync to plan a forward
        self._pending: int | None = None  # T of the forward in progress (appended, not yet advanced)

    # --- KVCache protocol ------------------------------------------------------------------------------
    @property
    def seq_lens(self) -> torch.Tensor:
        """(B,) int64 on the CPU: tokens committed per row."""
        return torch.tensor(self._lens, dtype=torch.int64)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KVH, T, Dh) at each row's next slots; return (B, KVH, max(seq_lens) + T, Dh) views."""
        T = self._check(layer, k, v)
        lens = self._lens
        start = lens[0]
        if all(n == start for n in lens):
            self.k_cache[layer][:, :, start:start + T] = k
            self.v_cache[layer][:, :, start:start + T] = v
        else:
            idx_BT = torch.tensor(lens, device=self.device)[:, None] + torch.arange(T, device=self.device)
            idx = idx_BT[:, None, :, None].expand(-1, self.n_kv_heads, -1, self.head_dim)
            self.k_cache[layer].scatter_(2, idx, k.to(self.dtype))
            self.v_cache[layer].scatter_(2, idx, v.to(self.dtype))
        S = max(lens) + T
        return self.k_cache[layer][:, :, :S], self.v_cache[layer][:, :, :S]

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed keys and values of ``layer``: (B, KVH, max(seq_lens), Dh); shorter rows are padded."""
        self._check_layer(layer)
        S = max(self._lens)
        return self.k_cache[layer][:, :, :S], self.v_cache[layer][:, :, :S]

    def advance(self, n_tokens: int) -> None:
        """Commit the ``n_tokens`` just appended to every layer."""
        if self._pending is None or n_tokens != self._pending:
            raise ShapeError(f"advance({n_tokens}): the tokens appended since the last advance number "
                             f"{self._pending or 0}")
        self._lens = [n + n_tokens for n in self._lens]
        self._pending = None

    def evict(self, rows: Sequence[int]) -> None:
        """Forget rows (their slots are reused by the next tokens written to them)."""
        for r in rows:
            if not 0 <= r < self.batch_size:
                raise ConfigError("rows", f"row {r} out of range for a cache of {self.batch_size} rows")
            self._lens[r] = 0

    def reset(self) -> None:
        self._lens = [0] * self.batch_size
        self._pending = None

    # --- helpers ---------------------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        check_layer(layer, self.n_layers)

    def _check(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> int:
        self._check_layer(layer)
        env = _KV.check(k, "k", B=self.batch_size, KVH=self.n_kv_heads, Dh=self.head_dim)
        _KV.check(v, "v", bound=env)
        T = env["T"]
        if layer == 0 or self._pending is None:  # a forward starts at layer 0 (a failed one is simply dropped)
            if max(self._lens) + T > self.max_seq_len:
                raise CacheFullError(f"cannot append {T} tokens: the longest row holds {max(self._lens)} of "
                                     f"max_seq_len={self.max_seq_len} slots")
            self._pending = T
        elif self._pending != T:
            raise ShapeError(f"append: layer {layer} got T={T} but this forward appends T={self._pending}")
        return T

    def __repr__(self) -> str:
        return (f"StaticKVCache(n_layers={self.n_layers}, batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, dtype={self.dtype}, seq_lens={self._lens})")
