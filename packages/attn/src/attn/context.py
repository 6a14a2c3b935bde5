"""Everything attention needs for one forward, computed once and shared by every layer.

``build_context`` turns the model-level arguments (positions, KV cache, HF-style ``attn_mask``, packed
``document_ids``) into token positions, RoPE angles, an ALiBi bias and one boolean mask built with
:func:`tensor.masks.attention_mask`. Masks are in *slot* coordinates: key slot j of row b is the j-th token held
for that row (cached or new) and the row's new tokens sit at slots ``seq_lens[b] .. seq_lens[b] + T - 1``, so rows
of different lengths (paged or evicted rows), left padding and chunked prefill all use one rule. Token positions
(RoPE, ALiBi, learned embeddings) skip padding, exactly as transformers' ``generate()`` computes them.

A fixed-shape cache (``cache.fixed_shape``, :class:`~attn.cache.fixed.FixedKVCache`) keeps its lengths on the device
and hands every layer its whole buffer, so S is its ``max_seq_len`` and the mask always carries the lengths: the
context is then built without reading anything back to the host, and a decode step can be graph-captured.

A decode step over such a cache (one new token per row, causal, nothing else masking) carries no mask at all:
``decode`` holds each row's length after the append (and a paged view's block table), and attention goes to the
registry's ``decode_attention`` op, which reads each row's slots up to its length and no further.

When every row has the same length and nothing else masks (plain causal training, prefill, decode of an unpadded
batch) the mask is None and the kernel is told ``causal=True`` (bottom-right aligned) instead, so SDPA and flash
kernels take their fast paths.

Shape legend: B batch rows, T new tokens, S key slots (cached + new), H heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attn.positions import ALiBi, RotaryEmbedding
from specs.config import ModelConfig
from specs.errors import ConfigError, ShapeError
from specs.protocols import KVCache
from specs.tensor_spec import TensorSpec
from tensor.alibi import alibi_bias
from tensor.masks import attention_mask, positions_from_padding

_BT = TensorSpec("B", "T")
_BS = TensorSpec("B", "S")


# attn_impl values whose decode steps use the registry's decode_attention op (others keep their own masked path)
DECODE_IMPLS = ("auto", "triton", "reference")


def mask_free_decode(cfg: ModelConfig, S: int) -> bool:
    """Whether a one-token step over a fixed-shape cache of S slots needs no mask beyond each row's length (so it
    goes to ``decode_attention``): causal, no ALiBi, no sliding window inside S, an attn_impl in DECODE_IMPLS."""
    window = cfg.sliding_window is not None and cfg.sliding_window < S
    return cfg.causal and cfg.pos_encoding != "alibi" and not window and cfg.attn_impl in DECODE_IMPLS


@dataclass(frozen=True)
class DecodeInfo:
    """What ``decode_attention`` needs besides q, k, v: valid slots per row after this step's append, for a paged
    cache its (B, NB) block table and block size, the cache's ``split_counters`` workspace when it has one, and
    RoPE's angle tables (P, Dh) when each token's position is its slot (no ``positions`` given): the op then reads
    the angles of slot ``lens_B - 1`` itself, and the step computes none. ``unified_ws``: a fixed cache's
    workspace for the unified decode attention (``FixedKVCache.use_unified``), which layers whose output
    projection reads it (``accepts_att``) then use."""

    lens_B: torch.Tensor
    block_table_BN: torch.Tensor | None = None
    block_size: int | None = None
    split_counters: torch.Tensor | None = None
    cos_PDh: torch.Tensor | None = None
    sin_PDh: torch.Tensor | None = None
    unified_ws: torch.Tensor | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.block_table_BN is not None:
            kw.update(block_table=self.block_table_BN, block_size=self.block_size)
        if self.split_counters is not None:
            kw["split_counters"] = self.split_counters
        return kw


@dataclass(frozen=True)
class AttentionContext:
    """Per-forward inputs of every attention layer (see the module docstring for the coordinates)."""

    positions_BT: torch.Tensor  # token positions of the new tokens (B, T) int64
    cos_BTDh: torch.Tensor | None  # RoPE angles, or None without RoPE
    sin_BTDh: torch.Tensor | None
    mask_B1TS: torch.Tensor | None  # bool, True = may attend; None: ``causal`` alone describes the pattern
    causal: bool  # tell the kernel to apply its own (bottom-right aligned) causal mask
    bias_BHTS: torch.Tensor | None  # additive score bias (ALiBi), fp32
    cache: KVCache | None
    decode: DecodeInfo | None = None  # set: a mask-free decode step over a fixed-shape cache (see module docstring)


def build_context(cfg: ModelConfig, input_ids_BT: torch.Tensor, *, positions: torch.Tensor | None = None,
                  cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                  document_ids: torch.Tensor | None = None, rotary: RotaryEmbedding | None = None,
                  alibi: ALiBi | None = None, dtype: torch.dtype = torch.float32) -> AttentionContext:
    """Positions, RoPE angles, ALiBi bias and mask for a forward over ``input_ids_BT`` (B, T).

    ``attn_mask`` is (B, S) with S = max(seq_lens) + T (HF style: 1 = real token, 0 = padding; column j is key slot
    j). ``positions`` (B, T) default to the slots of the new tokens minus the padding before them.
    ``document_ids`` (B, T) restrict attention to tokens of the same packed document (no cached tokens allowed).
    """
    env = _BT.check(input_ids_BT, "input_ids")
    B, T = env["B"], env["T"]
    device = input_ids_BT.device
    fixed = getattr(cache, "fixed_shape", False)
    if fixed:  # device lengths, whole-buffer keys: no host sync, same shapes every step (CUDA graphs)
        lens_B = cache.seq_lens
        if lens_B.shape[0] != B:
            raise ShapeError(f"input_ids has B={B} rows but the cache has {lens_B.shape[0]} rows")
        S, uniform = cache.max_seq_len, False
    else:
        lens = [0] * B
        if cache is not None:
            lens = cache.seq_lens.tolist()
            if len(lens) != B:
                raise ShapeError(f"input_ids has B={B} rows but the cache has {len(lens)} active rows")
        S = max(lens, default=0) + T
        uniform = all(n == lens[0] for n in lens)
        lens_B = torch.tensor(lens, device=device)
    q_slot_BT = lens_B[:, None] + torch.arange(T, device=device)

    valid_BS = tok_pos_BS = None
    if attn_mask is not None:
        _BS.check(attn_mask, f"attn_mask (B, S+T) = ({B}, {S})", B=B, S=S)
        valid_BS = attn_mask.to(device=device, dtype=torch.bool)
        # An all-ones mask (loaders always send one) masks nothing: drop it so kernels keep their causal fast
        # path. One host sync, skipped while compiling (as transformers does for SDPA).
        if not torch.compiler.is_compiling() and bool(valid_BS.all()):
            valid_BS = None
        else:
            tok_pos_BS = positions_from_padding(valid_BS)
    positions_given = positions
    if positions is None:
        positions = q_slot_BT if tok_pos_BS is None else tok_pos_BS.gather(1, q_slot_BT)
    else:
        _BT.check(positions, "positions", B=B, T=T)
        positions = positions.to(device=device, dtype=torch.int64)
    if document_ids is not None:
        _BT.check(document_ids, "document_ids", B=B, T=T)
        if S != T or fixed:
            raise ConfigError("document_ids", "packed-document masks need an empty cache (training or a first "
                              f"prefill), but the cache already holds {S - T} tokens")
        document_ids = document_ids.to(device)

    k_valid_BS = None
    if not uniform:
        k_valid_BS = torch.arange(S, device=device)[None, :] < (lens_B + T)[:, None]
    if valid_BS is not None:
        k_valid_BS = valid_BS if k_valid_BS is None else k_valid_BS & valid_BS
    window = cfg.sliding_window if cfg.sliding_window is not None and cfg.sliding_window < S else None
    mask, causal, decode = None, False, None
    if fixed and rotary is not None and rotary.static and not torch.compiler.is_compiling():
        rotary.tables(device, dtype, _slots(cache, S))  # made now (prefill) for the compiled decode steps below
    if fixed and T == 1 and valid_BS is None and mask_free_decode(cfg, S):
        table = getattr(cache, "block_table", None)  # a paged decode view's (B, NB) tensor
        paged = isinstance(table, torch.Tensor)
        cos_PDh = sin_PDh = None
        if cfg.pos_encoding == "rope" and rotary is not None and rotary.static and positions_given is None:
            cos_PDh, sin_PDh = rotary.tables(device, dtype, _slots(cache, S))  # positions are the slots here
        decode = DecodeInfo(lens_B + 1, table if paged else None, cache.block_size if paged else None,
                            getattr(cache, "split_counters", None), cos_PDh, sin_PDh,
                            None if paged else getattr(cache, "unified_ws", None))
    elif k_valid_BS is None and document_ids is None and window is None:
        causal = cfg.causal and T > 1  # the kernels' causal is bottom-right aligned: right for uniform rows
    else:
        k_slot_BS = torch.arange(S, device=device).expand(B, S)
        mask = attention_mask(q_slot_BT, k_slot_BS, causal=cfg.causal, k_valid_BS=k_valid_BS, window=window,
                              q_doc_BT=document_ids, k_doc_BS=document_ids)

    cos = sin = None
    if cfg.pos_encoding == "rope":
        if rotary is None:
            raise ConfigError("pos_encoding", "'rope' needs a RotaryEmbedding; pass rotary=")
        cos, sin = rotary(positions, dtype)
    bias = None
    if cfg.pos_encoding == "alibi":
        if alibi is None:
            raise ConfigError("pos_encoding", "'alibi' needs ALiBi slopes; pass alibi=")
        base_BS = tok_pos_BS if tok_pos_BS is not None else torch.arange(S, device=device).expand(B, S)
        k_pos_BS = base_BS.scatter(1, q_slot_BT, positions)  # new keys carry the queries' positions
        bias = alibi_bias(alibi.slopes(device), positions, k_pos_BS)
        if not cfg.causal:  # bidirectional: penalise distance both ways, -m|j - i|
            bias = -bias.abs()
    return AttentionContext(positions_BT=positions, cos_BTDh=cos, sin_BTDh=sin, mask_B1TS=mask, causal=causal,
                            bias_BHTS=bias, cache=cache, decode=decode)


def _slots(cache: Any, S: int) -> int:
    """Key slots a row of a fixed-shape cache can hold: S, or a paged view's block table's reach when longer."""
    table = getattr(cache, "block_table", None)
    return max(S, table.shape[1] * cache.block_size) if isinstance(table, torch.Tensor) else S


def describe(ctx: AttentionContext) -> dict[str, Any]:
    """A small summary for logs and tests: which masking path the forward takes."""
    return {"mask": None if ctx.mask_B1TS is None else tuple(ctx.mask_B1TS.shape), "causal": ctx.causal,
            "decode": ctx.decode is not None,
            "bias": ctx.bias_BHTS is not None, "rope": ctx.cos_BTDh is not None, "cache": ctx.cache is not None}
