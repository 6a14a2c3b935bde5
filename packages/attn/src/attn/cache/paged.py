"""A paged KV cache: a pool of fixed-size blocks and a block table per sequence (vLLM's PagedAttention).

Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention"
(arXiv:2309.06180). Sequences are named by hashable ids; ``set_active`` picks the batch rows of the next forward,
so sequences of different lengths decode together (continuous batching). With prefix caching, full blocks of
prompt tokens are shared between sequences through :class:`~attn.cache.block_pool.BlockPool`. Implements
:class:`specs.protocols.PagedKVCache`.

Storage per layer is one (num_blocks * block_size, KVH, Dh) tensor: token slot ``s`` of a sequence lives at
``block_table[s // block_size] * block_size + s % block_size``. ``append`` writes with one ``index_copy_`` and
returns the active rows gathered into (B, KVH, max(seq_lens) + T, Dh), slots past a row's length padded (the
model masks them). The slot indices are computed once per forward, at the first layer.

Shape legend: B active rows, KVH key/value heads, T new tokens, S slots, Dh head dim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from attn.cache._checks import check_layer, check_positive
from attn.cache.block_pool import ROOT_HASH, BlockPool, block_hash
from attn.cache.decode_view import PagedDecodeView
from attn.context import DECODE_IMPLS, mask_free_decode
from specs.config import ModelConfig
from specs.errors import CacheFullError, ConfigError, LmstackError, ShapeError
from specs.tensor_spec import TensorSpec

_KV = TensorSpec("B", "KVH", "T", "Dh")


class SequenceError(LmstackError, KeyError):
    """An unknown or duplicate sequence id in a paged cache."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Sequence:
    blocks: list[int] = field(default_factory=list)
    length: int = 0
    prompt: tuple[int, ...] = ()
    hashes: list[bytes] = field(default_factory=list)  # prefix hashes of its leading full prompt blocks
    root: bytes = ROOT_HASH  # the parent of its first block's hash: ROOT_HASH, or one of its salt


class PagedKVCache:
    """``num_blocks`` blocks of ``block_size`` token slots per layer, shared by any number of sequences.

    ``batch_size > 0`` registers sequences ``0 .. batch_size - 1`` and makes them active, so the cache can be used
    like a static one (``model(ids, cache=cache)``). ``max_seq_len`` caps each sequence (None: no cap).
    """

    def __init__(self, *, n_layers: int, n_kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16,
                 batch_size: int = 0, max_seq_len: int | None = None, prefix_caching: bool = True,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        check_positive(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, num_blocks=num_blocks,
                       block_size=block_size)
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_blocks * block_size, n_kv_heads, head_dim)
        self.k_pool = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v_pool = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.pool = BlockPool(num_blocks, prefix_caching=prefix_caching)
        self._seqs: dict[Hashable, _Sequence] = {}
        self._active: list[Hashable] = []
        self._plan: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (T, write slots (B*T,), read slots (B, S))
        self.batch_size = batch_size
        self.reset()

    @property
    def prefix_caching(self) -> bool:
        return self.pool.prefix_caching

    # --- sequences -------------------------------------------------------------------------------------
    def add_sequence(self, seq_id: Hashable, prompt_ids: Sequence[int] = (), *, salt: str | None = None) -> int:
        """Register ``seq_id``; return how many leading prompt tokens are already cached (a multiple of
        block_size, always < len(prompt_ids) so the forward computes at least the last prompt token).

        ``salt`` keeps the sequence's prefixes apart from those of other salts (and of none): blocks are shared
        only between sequences with equal salts. For keys and values that depend on more than the tokens (a LoRA
        adapter's), or for tenants that must not see each other's cache timing (vLLM's ``cache_salt``)."""
        if seq_id in self._seqs:
            raise SequenceError(f"sequence {seq_id!r} is already in the cache; free it first")
        if salt is not None and not isinstance(salt, str):
            raise ConfigError("salt", f"expected a str or None, got {type(salt).__name__}")
        root = ROOT_HASH if salt is None else hashlib.sha256(b"salt\0" + salt.encode("utf-8")).digest()
        seq = _Sequence(prompt=tuple(int(t) for t in prompt_ids), root=root)
        self._seqs[seq_id] = seq
        bs = self.block_size
        parent = root
        for i in range(len(seq.prompt) // bs):
            h = block_hash(parent, seq.prompt[i * bs:(i + 1) * bs])
            block = self.pool.lookup(h)
            if block is None:
                break
            self.pool.acquire(block)
            seq.blocks.append(block)
            seq.hashes.append(h)
            parent = h
        if seq.blocks and len(seq.blocks) * bs == len(seq.prompt):
            self.pool.release([seq.blocks.pop()])  # keep the last token to compute, so there are logits
            seq.hashes.pop()
        seq.length = len(seq.blocks) * bs
        return seq.length

    def reserve(self, seq_id: Hashable, n_tokens: int) -> None:
        """Make room for ``n_tokens`` more tokens of ``seq_id`` (all or nothing); CacheFullError if it cannot."""
        seq = self._get(seq_id)
        total = seq.length + n_tokens
        if self.max_seq_len is not None and total > self.max_seq_len:
            raise CacheFullError(f"sequence {seq_id!r} would hold {total} tokens, over max_seq_len={self.max_seq_len}")
        need = -(-total // self.block_size) - len(seq.blocks)
        if need > 0:
            seq.blocks.extend(self.pool.allocate(need))

    def extend(self, seq_id: Hashable, n_tokens: int) -> None:
        """Count ``n_tokens`` written to ``seq_id``'s reserved slots outside ``append`` (a decode view's step)."""
        seq = self._get(seq_id)
        if n_tokens < 0 or seq.length + n_tokens > len(seq.blocks) * self.block_size:
            raise ShapeError(f"extend({seq_id!r}, {n_tokens}): {seq.length} tokens held, room reserved for "
                             f"{len(seq.blocks) * self.block_size}")
        seq.length += n_tokens

    def decode_view(self, rows: int, max_seq_len: int, cfg: ModelConfig) -> PagedDecodeView:
        """A fixed-shape decode batch of ``rows`` rows over this cache's pools (CUDA-graph decode,
        :mod:`attn.cache.decode_view`) for a model of config ``cfg``; ConfigError when its decode steps need a mask
        beyond the row lengths (ALiBi, a sliding window, an attn_impl without ``decode_attention``). The first call
        takes one block from the pool for the padding rows of every view (CacheFullError if none is free);
        ``reset()`` returns it, and views made before a reset are stale."""
        if not mask_free_decode(cfg, max_seq_len):
            raise ConfigError("decode_view", f"this model's decode steps need a mask (causal={cfg.causal}, "
                              f"pos_encoding={cfg.pos_encoding!r}, sliding_window={cfg.sliding_window}, "
                              f"attn_impl={cfg.attn_impl!r}); a decode view serves causal models whose attn_impl "
                              f"is one of {DECODE_IMPLS}, without ALiBi or a window shorter than {max_seq_len}")
        if cfg.rope_scaling is not None and cfg.rope_scaling.type == "dynamic_ntk":
            raise ConfigError("decode_view", "dynamic-NTK RoPE reads the largest position back to the host every "
                              "step, so its decode steps cannot be captured")
        if self._scratch is None:
            self._scratch = self.pool.allocate(1)[0]
        return PagedDecodeView(self, rows, max_seq_len, self._scratch)

    def free(self, seq_id: Hashable) -> None:
        """Release the sequence's blocks (shared prefix blocks stay while others use them) and forget it."""
        seq = self._get(seq_id)
        self.pool.release(seq.blocks)
        del self._seqs[seq_id]
        self._active = [s for s in self._active if s != seq_id]
        self._plan = None

    def set_active(self, seq_ids: Sequence[Hashable]) -> None:
        """These sequences, in this order, are the batch rows of the next forward (tokens appended but never
        advanced, e.g. by a forward that failed, are dropped)."""
        for s in seq_ids:
            self._get(s)
        if len(set(seq_ids)) != len(seq_ids):
            raise SequenceError(f"set_active: duplicate sequence ids in {list(seq_ids)!r}")
        self._active = list(seq_ids)
        self._plan = None

    @property
    def active(self) -> list[Hashable]:
        return list(self._active)

    def num_free_blocks(self) -> int:
        """Blocks a reservation can take: unused ones, including freed blocks that still hold a cached prefix
        (they are reused least recently freed first)."""
        return self.pool.num_free()

    def block_table(self, seq_id: Hashable) -> list[int]:
        return list(self._get(seq_id).blocks)

    def seq_len(self, seq_id: Hashable) -> int:
        return self._get(seq_id).length

    # --- KVCache protocol ------------------------------------------------------------------------------
    @property
    def seq_lens(self) -> torch.Tensor:
        """(B,) int64 on the CPU: tokens committed per active row."""
        return torch.tensor([self._seqs[s].length for s in self._active], dtype=torch.int64)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KVH, T, Dh) for the active rows; return (B, KVH, max(seq_lens) + T, Dh) gathered.

        The first layer of a forward reserves room for the T tokens (CacheFullError if the pool is out of blocks).
        """
        self._check_layer(layer)
        env = _KV.check(k, "k", B=len(self._active), KVH=self.n_kv_heads, Dh=self.head_dim)
        _KV.check(v, "v", bound=env)
        T = env["T"]
        if layer == 0 or self._plan is None:  # a forward starts at layer 0 (a failed one is simply dropped)
            self._plan = None
            self._plan = self._make_plan(T)
        elif self._plan[0] != T:
            raise ShapeError(f"append: layer {layer} got T={T} but this forward appends T={self._plan[0]}")
        _, write, read_BS = self._plan
        B, S = read_BS.shape
        self.k_pool[layer].index_copy_(0, write, k.transpose(1, 2).reshape(B * T, self.n_kv_heads, self.head_dim)
                                       .to(self.dtype))
        self.v_pool[layer].index_copy_(0, write, v.transpose(1, 2).reshape(B * T, self.n_kv_heads, self.head_dim)
                                       .to(self.dtype))
        return self._gather(layer, read_BS)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed keys and values of the active rows, (B, KVH, max(seq_lens), Dh)."""
        self._check_layer(layer)
        lens = [self._seqs[s].length for s in self._active]
        return self._gather(layer, self._slots(lens, max(lens, default=0)))

    def advance(self, n_tokens: int) -> None:
        """Commit the tokens just appended; full prompt blocks become shareable prefixes."""
        if self._plan is None or n_tokens != self._plan[0]:
            raise ShapeError(f"advance({n_tokens}): the tokens appended since the last advance number "
                             f"{0 if self._plan is None else self._plan[0]}")
        bs = self.block_size
        for s in self._active:
            seq = self._seqs[s]
            seq.length += n_tokens
            for i in range(len(seq.hashes), min(seq.length, len(seq.prompt)) // bs):
                parent = seq.hashes[-1] if seq.hashes else seq.root
                h = block_hash(parent, seq.prompt[i * bs:(i + 1) * bs])
                self.pool.register(seq.blocks[i], h)
                seq.hashes.append(h)
        self._plan = None

    def evict(self, rows: Sequence[int]) -> None:
        """Empty the sequences at these active rows (their blocks return to the pool; they stay registered)."""
        for r in rows:
            if not 0 <= r < len(self._active):
                raise ConfigError("rows", f"row {r} out of range for {len(self._active)} active sequences")
            seq = self._seqs[self._active[r]]
            self.pool.release(seq.blocks)
            self._seqs[self._active[r]] = _Sequence()
        self._plan = None

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix but keep the sequences, their blocks and the decode views' scratch block
        (``reset()`` drops all three): what a cache of a model whose weights were just replaced needs, since its
        cached prefixes hold keys and values of the old weights. Returns how many prefixes were forgotten."""
        return self.pool.forget_prefixes()

    def reset(self) -> None:
        """Forget every sequence and cached prefix: back to the state right after construction."""
        self.pool.reset()
        self._scratch: int | None = None
        self._seqs = {i: _Sequence() for i in range(self.batch_size)}
        self._active = list(range(self.batch_size))
        self._plan = None

    # --- helpers ---------------------------------------------------------------------------------------
    def _get(self, seq_id: Hashable) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise SequenceError(f"unknown sequence {seq_id!r}; add_sequence() it first") from None

    def _check_layer(self, layer: int) -> None:
        check_layer(layer, self.n_layers)

    def _make_plan(self, T: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        for s in self._active:
            self.reserve(s, T)
        lens = [self._seqs[s].length for s in self._active]
        S = max(lens, default=0) + T
        read_BS = self._slots([n + T for n in lens], S)
        new_BT = torch.tensor(lens, device=self.device)[:, None] + torch.arange(T, device=self.device)
        write = read_BS.gather(1, new_BT).reshape(-1)
        return T, write, read_BS

    def _slots(self, lens: list[int], S: int) -> torch.Tensor:
        """(B, S) pool slot of each active row's token slots 0..S-1 (slots past a row's length point at slot 0)."""
        bs = self.block_size
        n_blocks = -(-S // bs)
        table = [self._seqs[s].blocks[:n_blocks] for s in self._active]
        table_BN = torch.tensor([t + [0] * (n_blocks - len(t)) for t in table], dtype=torch.int64,
                                device=self.device).reshape(len(table), n_blocks)
        j = torch.arange(S, device=self.device)
        slots_BS = table_BN[:, j // bs] * bs + j % bs
        valid_BS = j[None, :] < torch.tensor(lens, device=self.device)[:, None]
        return slots_BS.where(valid_BS, torch.zeros_like(slots_BS))

    def _gather(self, layer: int, slots_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S = slots_BS.shape
        flat = slots_BS.reshape(-1)
        k = self.k_pool[layer].index_select(0, flat).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_pool[layer].index_select(0, flat).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def __repr__(self) -> str:
        return (f"PagedKVCache(n_layers={self.n_layers}, num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"sequences={len(self._seqs)}, active={len(self._active)}, free_blocks={self.num_free_blocks()})")
