"""Pure-torch reference implementations of every kernel op: the fallback and the yardstick for fast kernels.

They favour clarity and accuracy over speed: attention and cross-entropy compute in float32 and cast back.
RMSNorm follows Hugging Face's LlamaRMSNorm (normalise in fp32, cast, then scale) and ``rope`` is
``tensor.rope.apply_rope``, so models built on these references match transformers to fp32 round-off.

Attention semantics shared by every implementation (the conformance suite in ``kernel.testing`` checks them):
  - q (B, H, T, Dh); k, v (B, KVH, S, Dh) with KVH dividing H; query head h reads KV head h // (H // KVH).
  - ``causal=True`` is bottom-right aligned: query t sits at position S - T + t (prefill T == S, decode T < S).
  - ``mask`` is bool, True = may attend, broadcastable to (B, H, T, S); ``bias`` is a finite float additive score
    bias broadcastable to (B, H, T, S) (ALiBi); ``scale`` defaults to Dh ** -0.5.
  - a query row that may attend to nothing returns zeros (and zero gradients), never NaN.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernel.linear_ce import chunked_linear_cross_entropy
from specs.errors import ConfigError, ShapeError
from specs.tensor_spec import KEY_VALUE, QUERY, TensorSpec
from tensor.masks import causal_mask
from tensor.rope import apply_rope

_LOGITS = TensorSpec("N", "V")
_DEC_Q = TensorSpec("B", "H", "Dh")
_POOL = TensorSpec("N", "KVH", "Dh")
_BN = TensorSpec("B", "NB")
_B = TensorSpec("B")
_LABELS = TensorSpec("N")


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate shapes; returns (B, H, KVH, T, S, Dh)."""
    env = QUERY.check(q, "q_BHTDh")
    kv = KEY_VALUE.check(k, "k_BKSDh", B=env["B"], Dh=env["Dh"])
    KEY_VALUE.check(v, "v_BKSDh", bound=kv)
    H, KVH = env["H"], kv["KVH"]
    if H % KVH:
        raise ShapeError(f"attention: query heads H={H} must be a multiple of KV heads KVH={KVH}")
    return env["B"], H, KVH, env["T"], kv["S"], env["Dh"]


def allowed_mask(mask: torch.Tensor | None, causal: bool, T: int, S: int, device: torch.device) -> torch.Tensor | None:
    """The bool 'may attend' mask combining ``mask`` and bottom-right causal masking (None when nothing masks)."""
    if mask is not None and mask.dtype != torch.bool:
        raise ShapeError(f"attention: mask must be bool (True = may attend), got {mask.dtype}; "
                         "pass additive float scores as bias=")
    if causal:
        if T > S:
            raise ShapeError(f"attention: causal needs T <= S (queries are the last T keys), got T={T}, S={S}")
        cm = causal_mask(T, S, device=device)
        return cm if mask is None else (mask.to(device) & cm)
    return mask


def repeat_kv(x_BKSDh: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, KVH, S, Dh) -> (B, KVH * n_rep, S, Dh), each KV head repeated for its group of query heads."""
    return x_BKSDh if n_rep == 1 else x_BKSDh.repeat_interleave(n_rep, dim=1)


def attention(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention in float32 (matmul + softmax); returns (B, H, T, Dh) in q's dtype."""
    _, H, KVH, _, _, _ = check_attention_inputs(q_BHTDh, k_BKSDh, v_BKSDh)
    probs = attention_probs(q_BHTDh, k_BKSDh, mask=mask, causal=causal, scale=scale, bias=bias)
    return (probs @ repeat_kv(v_BKSDh, H // KVH).float()).to(q_BHTDh.dtype)


def attention_probs(q_BHTDh: torch.Tensor, k_BKSDh: torch.Tensor, *, mask: torch.Tensor | None = None,
                    causal: bool = False, scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention pattern of :func:`attention`: softmax(q k^T * scale + bias) over the allowed keys, (B, H, T, S)
    float32 (rows that may attend to nothing are zeros)."""
    _, H, KVH, T, S, Dh = check_attention_inputs(q_BHTDh, k_BKSDh, k_BKSDh)
    scale = Dh**-0.5 if scale is None else scale
    k = repeat_kv(k_BKSDh, H // KVH).float()
    scores_BHTS = (q_BHTDh.float() @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores_BHTS = scores_BHTS + bias.float()
    allowed = allowed_mask(mask, causal, T, S, q_BHTDh.device)
    if allowed is None:
        probs = torch.softmax(scores_BHTS, dim=-1)
    else:
        empty = ~allowed.any(dim=-1, keepdim=True)
        # Empty rows attend (harmlessly) to everything, then are zeroed: finite forward and zero gradients.
        probs = torch.softmax(scores_BHTS.masked_fill(~(allowed | empty), float("-inf")), dim=-1)
        probs = probs.masked_fill(empty, 0.0)
    return probs


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019) over the last dim, normalised in fp32 as Hugging Face's LlamaRMSNorm."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    h = h.to(x.dtype)
    return h if weight is None else weight * h


def layernorm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm (Ba et al. 2016) over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rope(x_BHTDh: torch.Tensor, cos_BTDh: torch.Tensor, sin_BTDh: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half layout (``tensor.rope.apply_rope``)."""
    return apply_rope(x_BHTDh, cos_BTDh, sin_BTDh)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (Shazeer 2020, "GLU Variants Improve Transformer")."""
    return F.silu(gate) * up


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: the autocast dtype where autocast is on for x's device, else x's own."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def gelu_mlp(x: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor | None, down_weight: torch.Tensor,
             down_bias: torch.Tensor | None) -> torch.Tensor:
    """GPT-2's MLP: ``down(gelu_tanh(up(x)))`` (Hendrycks & Gimpel 2016, the tanh approximation);
    (..., D) -> (..., D_out)."""
    return F.linear(F.gelu(F.linear(x, up_weight, up_bias), approximate="tanh"), down_weight, down_bias)


def cross_entropy(logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy in fp32 over labels != ignore_index (0.0 when every label is ignored)."""
    _LOGITS.check(logits_NV, "logits_NV")
    _LABELS.check(labels_N, "labels_N", N=logits_NV.shape[0])
    total = F.cross_entropy(logits_NV.float(), labels_N, ignore_index=ignore_index, reduction="sum")
    return total / (labels_N != ignore_index).sum().clamp_min(1)


def linear_cross_entropy(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                         ignore_index: int = -100, *, chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` without materialising the (N, V) logits (chunked over N).

    ``chunk_size`` None picks rows per chunk so one logits chunk is about the size of the hidden states.
    """
    return chunked_linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index, chunk_size)


def linear_cross_entropy_logits(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor,
                                ignore_index: int = -100) -> torch.Tensor:
    """The same loss through materialised (N, V) logits: one large matmul, the layout torch.compile fuses best."""
    return cross_entropy(F.linear(hidden_ND, weight_VD), labels_N, ignore_index)


def check_decode_inputs(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor,
                        block_table: torch.Tensor | None, block_size: int | None) -> tuple[int, int, int, int]:
    """Validate :func:`decode_attention`'s arguments; returns (B, H, KVH, Dh)."""
    env = _DEC_Q.check(q_BHDh, "q_BHDh")
    B, H, Dh = env["B"], env["H"], env["Dh"]
    if block_table is None:
        kv = KEY_VALUE.check(k, "k_BKLDh", B=B, Dh=Dh)
        KEY_VALUE.check(v, "v_BKLDh", bound=kv)
    else:
        _BN.check(block_table, "block_table", B=B)
        if block_size is None or block_size <= 0:
            raise ShapeError(f"decode_attention: a block_table needs block_size > 0, got {block_size}")
        if block_table.dtype not in (torch.int32, torch.int64):
            raise ShapeError(f"decode_attention: block_table must be int32 or int64, got {block_table.dtype}")
        kv = _POOL.check(k, "k_pool", Dh=Dh)
        _POOL.check(v, "v_pool", bound=kv)
        if kv["N"] % block_size:
            raise ShapeError(f"decode_attention: the pool's {kv['N']} slots are not a whole number of "
                             f"{block_size}-slot blocks")
    _B.check(lens_B, "lens_B", B=B)
    if lens_B.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"decode_attention: lens_B must be int32 or int64, got {lens_B.dtype}")
    KVH = kv["KVH"]
    if H % KVH:
        raise ShapeError(f"decode_attention: query heads H={H} must be a multiple of KV heads KVH={KVH}")
    return B, H, KVH, Dh


def check_split_counters(op: str, counters: torch.Tensor | None, n: int, what: str, device: torch.device) -> None:
    """A kernel's split-combine workspace, when given: a contiguous int32 buffer of at least ``n`` (``what``)
    entries on ``device``."""
    if counters is not None and (counters.dtype != torch.int32 or counters.device != device
                                 or not counters.is_contiguous() or counters.numel() < n):
        raise ShapeError(f"{op}: split_counters should be a contiguous int32 buffer of at least {what} = {n} entries "
                         f"on {device}, got {counters.dtype} {tuple(counters.shape)} on {counters.device}")


def decode_attention(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                     block_table: torch.Tensor | None = None, block_size: int | None = None,
                     scale: float | None = None, k_new: torch.Tensor | None = None,
                     v_new: torch.Tensor | None = None, cos_BDh: torch.Tensor | None = None,
                     sin_BDh: torch.Tensor | None = None, split_counters: torch.Tensor | None = None,
                     cos_PDh: torch.Tensor | None = None, sin_PDh: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per row against the first ``lens_B[b]`` key slots of its row; (B, H, Dh) out.

    ``k``, ``v``: per-row buffers (B, KVH, L, Dh), or with ``block_table`` (B, NB) a paged pool (slots, KVH, Dh)
    where slot s of row b is ``block_table[b, s // block_size] * block_size + s % block_size`` (vLLM's layout).
    Slots at or past a row's length are never attended; a row of length 0 gives zeros.

    With ``k_new``/``v_new`` (B, KVH, Dh) the op also does the step's cache write: the new token's key and value go
    to slot ``lens_B[b] - 1`` of each row (``lens_B`` counts the new token; rows of length 0 write nothing), after
    RoPE when ``cos_BDh``/``sin_BDh`` (B, Dh) are given, which then rotate q as well (``rope``'s rotate-half
    layout). One kernel instead of rope, append and attention: a decode step's cache write belongs here.
    ``cos_PDh``/``sin_PDh`` (P, Dh) instead: tables of the angles by position, P covering every slot of a row,
    read at each row's new slot ``lens_B[b] - 1`` (the token's position when positions are slots, as in a decode
    loop without padding): no per-step angle kernels (:func:`decode_rope`).

    ``split_counters``: a zeroed int32 workspace of at least B x KVH entries that a kernel splitting the slots over
    programs may use to combine them without a second kernel, and leaves zeroed (the Triton kernel's); unused here.
    """
    cos_BDh, sin_BDh = decode_rope(q_BHDh, k, lens_B, block_table, block_size, cos_BDh, sin_BDh, cos_PDh, sin_PDh)
    if k_new is not None or cos_BDh is not None:
        q_BHDh = decode_new_token(q_BHDh, k, v, lens_B, block_table, block_size, k_new, v_new, cos_BDh, sin_BDh)
    k, v, valid_B11S = decode_keys(q_BHDh, k, v, lens_B, block_table, block_size)
    return attention(q_BHDh[:, :, None], k, v, mask=valid_B11S, scale=scale)[:, :, 0]


def check_rope_tables(q_BHDh: torch.Tensor, k: torch.Tensor, block_table: torch.Tensor | None,
                      block_size: int | None, cos_BDh: torch.Tensor | None, cos_PDh: torch.Tensor | None,
                      sin_PDh: torch.Tensor | None) -> None:
    """Validate :func:`decode_attention`'s ``cos_PDh``/``sin_PDh`` (given together, not with ``cos_BDh``): (P, Dh)
    on q's device with P at least the slots a row can hold, so every row's new slot has a row of angles."""
    if (cos_PDh is None) != (sin_PDh is None):
        raise ShapeError("decode_attention: cos_PDh and sin_PDh go together")
    if cos_PDh is None:
        return
    if cos_BDh is not None:
        raise ShapeError("decode_attention: give the angles per row (cos_BDh/sin_BDh) or by position "
                         "(cos_PDh/sin_PDh), not both")
    Dh = q_BHDh.shape[-1]
    slots = k.shape[2] if block_table is None else block_table.shape[1] * (block_size or 0)
    for name, t in (("cos_PDh", cos_PDh), ("sin_PDh", sin_PDh)):
        if t.dim() != 2 or t.shape[1] != Dh or t.shape[0] < slots or t.device != q_BHDh.device:
            raise ShapeError(f"decode_attention: {name} should be (P, Dh={Dh}) with P >= {slots} (the slots of a "
                             f"row) on {q_BHDh.device}, got {tuple(t.shape)} on {t.device}")


def decode_rope(q_BHDh: torch.Tensor, k: torch.Tensor, lens_B: torch.Tensor, block_table: torch.Tensor | None,
                block_size: int | None, cos_BDh: torch.Tensor | None, sin_BDh: torch.Tensor | None,
                cos_PDh: torch.Tensor | None, sin_PDh: torch.Tensor | None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each row's angles (B, Dh): ``cos_BDh``/``sin_BDh`` as given, or the tables' rows at position
    ``lens_B - 1`` (0 for an empty row, which writes nothing)."""
    check_rope_tables(q_BHDh, k, block_table, block_size, cos_BDh, cos_PDh, sin_PDh)
    if cos_PDh is None:
        return cos_BDh, sin_BDh
    pos_B = (lens_B.to(cos_PDh.device).long() - 1).clamp_min(0)
    return cos_PDh[pos_B], sin_PDh[pos_B]


def check_new_token(q_BHDh: torch.Tensor, k: torch.Tensor, k_new: torch.Tensor | None, v_new: torch.Tensor | None,
                    cos_BDh: torch.Tensor | None, sin_BDh: torch.Tensor | None) -> None:
    """Validate :func:`decode_attention`'s new-token arguments against q (B, H, Dh) and the cache ``k``."""
    B, H, Dh = q_BHDh.shape
    KVH = k.shape[-2] if k.dim() == 3 else k.shape[1]
    if k_new is None or v_new is None:
        raise ShapeError("decode_attention: k_new and v_new go together (and cos/sin need them): got "
                         f"k_new={'set' if k_new is not None else None}, v_new={'set' if v_new is not None else None}")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if tuple(t.shape) != (B, KVH, Dh):
            raise ShapeError(f"decode_attention: {name} should be (B, KVH, Dh) = {(B, KVH, Dh)}, got {tuple(t.shape)}")
    if (cos_BDh is None) != (sin_BDh is None):
        raise ShapeError("decode_attention: cos_BDh and sin_BDh go together")
    for name, t in (("cos_BDh", cos_BDh), ("sin_BDh", sin_BDh)):
        if t is not None and tuple(t.shape) != (B, Dh):
            raise ShapeError(f"decode_attention: {name} should be (B, Dh) = {(B, Dh)}, got {tuple(t.shape)}")


def decode_new_token(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor,
                     block_table: torch.Tensor | None, block_size: int | None, k_new: torch.Tensor | None,
                     v_new: torch.Tensor | None, cos_BDh: torch.Tensor | None,
                     sin_BDh: torch.Tensor | None) -> torch.Tensor:
    """The new-token part of :func:`decode_attention` in torch: rotate q and k_new, write k_new/v_new at slot
    ``lens_B - 1`` of each row (in place; rows of length 0 keep the slot's old contents); returns the rotated q."""
    check_new_token(q_BHDh, k, k_new, v_new, cos_BDh, sin_BDh)
    if cos_BDh is not None:
        cos, sin = cos_BDh[:, None], sin_BDh[:, None]  # (B, T=1, Dh)
        q_BHDh = apply_rope(q_BHDh[:, :, None], cos, sin)[:, :, 0]
        k_new = apply_rope(k_new[:, :, None], cos, sin)[:, :, 0]
    lens = lens_B.to(k.device).long()
    pos_B = (lens - 1).clamp_min(0)
    keep_B11 = (lens == 0)[:, None, None]
    if block_table is None:
        rows = torch.arange(k.shape[0], device=k.device)
        for buf, new in ((k, k_new), (v, v_new)):  # buf[b, :, pos[b]] is (B, KVH, Dh)
            buf[rows, :, pos_B] = torch.where(keep_B11, buf[rows, :, pos_B], new.to(buf.dtype))
    else:
        slot_B = block_table.long().gather(1, (pos_B // block_size)[:, None])[:, 0] * block_size + pos_B % block_size
        for buf, new in ((k, k_new), (v, v_new)):  # pool (slots, KVH, Dh)
            buf.index_copy_(0, slot_B, torch.where(keep_B11, buf[slot_B], new.to(buf.dtype)))
    return q_BHDh


def decode_keys(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor,
                block_table: torch.Tensor | None, block_size: int | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked decode inputs as plain attention inputs: (B, KVH, S, Dh) keys and values (gathered through the block
    table when there is one) and the (B, 1, 1, S) bool mask of each row's first ``lens_B[b]`` slots."""
    check_decode_inputs(q_BHDh, k, v, lens_B, block_table, block_size)
    if block_table is not None:
        j = torch.arange(block_table.shape[1] * block_size, device=k.device)
        slots_BS = block_table.long()[:, j // block_size] * block_size + j % block_size
        k = k[slots_BS].transpose(1, 2)  # (B, S, KVH, Dh) -> (B, KVH, S, Dh)
        v = v[slots_BS].transpose(1, 2)
    S = k.shape[2]
    valid_B11S = (torch.arange(S, device=k.device)[None, :] < lens_B.to(k.device)[:, None])[:, None, None, :]
    return k, v, valid_B11S


# ``linear``'s split_counters: one entry per this many output columns (the narrowest column tile of a kernel)
SPLIT_COUNTER_COLUMNS = 16
SPLIT_COMBINE_ENV = "LMSTACK_SPLIT_COMBINE"


class UnifiedParts(NamedTuple):
    """A decode attention's output left unnormalised for the output projection (:func:`decode_attention_unified`):
    ``x`` (B, W) fp32, this layer's row of the workspace (H x Dh outputs, H sums, a flag), the splits' partials
    ``acc`` (B, H, NS, Dh), ``m`` and ``l`` (B, H, NS) for a flagged row, and ``dtype``, the attention output's.
    A ``linear`` implementation given ``att=`` reads the output from them (the Triton gemv divides as it loads);
    :meth:`output` materialises it."""

    x: torch.Tensor
    acc: torch.Tensor
    m: torch.Tensor
    l: torch.Tensor
    dtype: torch.dtype

    def output(self) -> torch.Tensor:
        """The attention output (B, H x Dh) in ``dtype`` (:func:`unified_output`)."""
        return unified_output(self.x, self.acc, self.m, self.l, self.dtype)


def unified_output(x_BW: torch.Tensor, acc_BHND: torch.Tensor, m_BHN: torch.Tensor, l_BHN: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """The attention output (B, H x Dh) in ``dtype`` from a unified-shift decode attention's accumulators ``x_BW``
    (per row: H x Dh outputs, H sums, a flag; ``kernel.triton.decode_attention.decode_attention_unified``): the
    outputs over their head's sum, or where a row's flag is set, its splits' partials ``acc`` (B, H, NS, Dh), ``m``,
    ``l`` (B, H, NS) combined as flash-decoding does (each rescaled to the largest max)."""
    B, H, _, Dh = acc_BHND.shape
    acc = x_BW[:, :H * Dh].view(B, H, Dh)
    out = acc / x_BW[:, H * Dh:H * Dh + H, None]
    m_max = m_BHN.amax(-1, keepdim=True)
    w = torch.exp(m_BHN - torch.where(m_max > float("-inf"), m_max, torch.zeros_like(m_max)))  # (B, H, NS)
    den = (w * l_BHN).sum(-1, keepdim=True)
    merged = torch.where(den > 0, (w[..., None] * acc_BHND).sum(-2) / den.clamp_min(1e-30), 0.0)
    flagged = x_BW[:, H * Dh + H] != 0
    return torch.where(flagged[:, None, None], merged, out).to(dtype).reshape(B, H * Dh)


def unified_width(H: int, Dh: int) -> int:
    """Entries of one row of a unified-shift workspace: H x Dh outputs, H sums and a flag, to a multiple of 16 (so
    every row starts 64-byte aligned, which Triton sees: vector atomics)."""
    return (H * Dh + H + 1 + 15) // 16 * 16


def unified_workspace(layers: int, B: int, H: int, Dh: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A zeroed (layers, B, W) fp32 workspace for :func:`decode_attention_unified`: one slot per layer of a model
    whose layers run in order every step (at least two), kept with the KV cache."""
    if layers < 2:
        raise ShapeError(f"decode_attention_unified: each layer's call zeroes the next layer's accumulators, so the "
                         f"workspace needs at least 2 layers, got {layers}")
    return torch.zeros(layers, B, unified_width(H, Dh), dtype=torch.float32, device=device)


def check_unified(ws: torch.Tensor, layer: int, B: int, H: int, Dh: int, fixed_new: bool,
                  device: torch.device) -> None:
    """A unified-shift call's workspace and layer: (layers >= 2, B, W) contiguous fp32 on q's device, a layer in
    range, and the step's new token over a fixed (not paged) cache."""
    want = (B, unified_width(H, Dh))
    if (ws.dim() != 3 or ws.shape[0] < 2 or tuple(ws.shape[1:]) != want or ws.dtype != torch.float32
            or not ws.is_contiguous() or ws.device != device):
        raise ShapeError(f"decode_attention_unified: ws should be a contiguous fp32 (layers >= 2, {want[0]}, "
                         f"{want[1]}) workspace on {device} (unified_workspace), got {tuple(ws.shape)} "
                         f"{ws.dtype} on {ws.device}")
    if not 0 <= layer < ws.shape[0]:
        raise ShapeError(f"decode_attention_unified: layer {layer} is outside the workspace's {ws.shape[0]} layers")
    if not fixed_new:
        raise ShapeError("decode_attention_unified: needs the step's new token (k_new, v_new) and a fixed cache "
                         "(slot 0's key is read from it), not a paged pool")


def decode_attention_unified(q_BHDh: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens_B: torch.Tensor, *,
                             ws: torch.Tensor, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
                             scale: float | None = None, cos_BDh: torch.Tensor | None = None,
                             sin_BDh: torch.Tensor | None = None, cos_PDh: torch.Tensor | None = None,
                             sin_PDh: torch.Tensor | None = None) -> UnifiedParts:
    """:func:`decode_attention` over a fixed (B, KVH, L, Dh) cache with the step's new token (written to it), its
    output left in the workspace ``ws`` (layers, B, W) (:func:`unified_workspace`) for the output projection: row
    ``ws[layer]`` receives the outputs with sums of 1 and no flag, and ``ws[(layer + 1) % layers]`` is zeroed, as
    the Triton kernel leaves them (whose outputs are sums of its slot splits' shifted partials: the same output,
    :meth:`UnifiedParts.output`). A layer's call must follow the previous layer's in every step."""
    B, H, Dh = q_BHDh.shape
    check_unified(ws, layer, B, H, Dh, k_new is not None and v_new is not None and k.dim() == 4, q_BHDh.device)
    o_BHDh = decode_attention(q_BHDh, k, v, lens_B, scale=scale, k_new=k_new, v_new=v_new, cos_BDh=cos_BDh,
                              sin_BDh=sin_BDh, cos_PDh=cos_PDh, sin_PDh=sin_PDh)
    dtype, o_BHDh = o_BHDh.dtype, o_BHDh.float()
    ws[layer, :, :H * Dh] = o_BHDh.reshape(B, H * Dh)
    ws[layer, :, H * Dh:H * Dh + H] = 1.0
    ws[layer, :, H * Dh + H:] = 0.0
    ws[(layer + 1) % ws.shape[0]] = 0.0
    ones = torch.ones(B, H, 1, dtype=torch.float32, device=q_BHDh.device)
    return UnifiedParts(ws[layer], o_BHDh[:, :, None], torch.zeros_like(ones), ones, dtype)


def check_att(x: torch.Tensor, att: UnifiedParts, op: str, rms_eps: float | None, glu: str | None) -> None:
    """A ``linear`` op's ``att`` call: x is ``att.x`` (the accumulators row), with no ``rms_eps`` or ``glu``."""
    if x.shape != att.x.shape or rms_eps is not None or glu is not None:
        raise ShapeError(f"{op}: with att, x is the attention's accumulators row att.x {tuple(att.x.shape)} (got "
                         f"{tuple(x.shape)}), with no rms_eps or glu (an output projection's input)")


def unified_input(x: torch.Tensor, att: UnifiedParts | None, op: str, rms_eps: float | None = None,
                  glu: str | None = None) -> torch.Tensor:
    """A ``linear`` op's input: x itself, or given ``att`` (x is then ``att.x``, :func:`check_att`) the attention
    output it holds, (B, H x Dh) (:meth:`UnifiedParts.output`)."""
    if att is None:
        return x
    check_att(x, att, op, rms_eps, glu)
    return att.output()


def split_combine_in_kernel() -> bool:
    """Whether layers and caches keep ``split_counters`` workspaces, so that kernels which split their work over
    programs (the skinny matmul's K, decode attention's slots) combine the splits in the same kernel:
    ``$LMSTACK_SPLIT_COMBINE=last`` (the last split to finish combines). Unset or ``kernel``: a second pass does
    (the default; on an H200 a 1.1B decode step measured level either way, docs/benchmarks.md)."""
    raw = os.environ.get(SPLIT_COMBINE_ENV, "kernel")
    if raw not in ("kernel", "last"):
        raise ConfigError(SPLIT_COMBINE_ENV, f"expected 'kernel' (a second pass, the default) or 'last' (the last "
                                             f"split combines in the kernel), got {raw!r}")
    return raw == "last"


def linear_split_counters(n_out: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A zeroed ``split_counters`` workspace for ``linear`` calls of ``n_out`` output columns (a layer keeps one)."""
    return torch.zeros(-(-n_out // SPLIT_COUNTER_COLUMNS), dtype=torch.int32, device=device)


GLUS = ("silu",)


def check_glu(glu: str | None, residual: torch.Tensor | None, n_out: int, op: str) -> None:
    """Name what is wrong with a ``glu`` request on an ``n_out``-row weight (ConfigError, ShapeError)."""
    if glu is None:
        return
    if glu not in GLUS:
        raise ConfigError(op, f"glu must be one of {GLUS} or None, got {glu!r}")
    if residual is not None:
        raise ConfigError(op, "glu and residual cannot be combined: the SwiGLU output is half the projection's "
                              "width")
    if n_out % 2:
        raise ShapeError(f"{op}: with glu={glu!r} the weight's rows are [gate | up], an even count; got {n_out}")


def glu_output(y: torch.Tensor, glu: str | None, residual: torch.Tensor | None, op: str) -> torch.Tensor:
    """y itself, or for ``glu="silu"`` the SwiGLU of its halves: y (..., 2F) is a fused gate/up projection's
    output [gate | up] and becomes ``silu(gate) * up`` (..., F) (:func:`check_glu` first)."""
    check_glu(glu, residual, y.shape[-1], op)
    if glu is None:
        return y
    f = y.shape[-1] // 2
    return swiglu(y[..., :f], y[..., f:])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           rms_eps: float | None = None, residual: torch.Tensor | None = None,
           split_counters: torch.Tensor | None = None, glu: str | None = None,
           att: UnifiedParts | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``F.linear``); x (..., K), weight (N, K). ``rms_eps``: x is first RMS-normalised
    without a weight, in fp32 (an RMSNorm whose weight has been folded into ``weight``'s columns); ``residual``
    (..., N) is added to the result. ``split_counters``: a zeroed int32 workspace (:func:`linear_split_counters`),
    with which a kernel that splits K over programs sums the splits in the same kernel, left zeroed (the Triton
    skinny matmul's); unused here. ``glu="silu"``: the weight is a fused gate/up projection (gate rows first) and
    the result ``silu(gate) * up``, (..., N / 2) (:func:`glu_output`; a SwiGLU MLP's first matmul). ``att``: x is
    a unified decode attention's accumulators row ``att.x`` and the input is the attention output they hold
    (:func:`unified_input`; an output projection's call, which a kernel may read without materialising it)."""
    x = unified_input(x, att, "linear", rms_eps, glu)
    if rms_eps is not None:
        x = rmsnorm(x, None, rms_eps)
    y = glu_output(F.linear(x, weight, bias), glu, residual, "linear")
    return y if residual is None else y + residual


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None, *, rms_eps: float | None = None,
                residual: torch.Tensor | None = None, glu: str | None = None,
                att: UnifiedParts | None = None) -> torch.Tensor:
    """Weight-only int8 linear: ``(x @ w_int8.T) * scale + bias``; x (..., K), w (N, K) int8, scale (N,).
    ``rms_eps``, ``residual``, ``glu`` and ``att`` as :func:`linear` (a folded RMSNorm of x first, the residual
    added last, a SwiGLU of the result's halves, the input read from a unified attention's accumulators)."""
    x = unified_input(x, att, "int8_linear", rms_eps, glu)
    if rms_eps is not None:
        x = rmsnorm(x, None, rms_eps)
    y = F.linear(x, weight_int8.to(x.dtype)) * scale.to(x.dtype)
    y = glu_output(y if bias is None else y + bias.to(x.dtype), glu, residual, "int8_linear")
    return y if residual is None else y + residual


# decode_layer's counters: [0] a grid barrier, [1] programs done, then one per KV head (attention's split combine)
DECODE_LAYER_COUNTER_SLOTS = 2


def decode_layer_counters(n_kv_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A zeroed ``counters`` workspace for :func:`decode_layer` calls on a layer of ``n_kv_heads`` KV heads (the
    Triton kernel's grid barrier and split combine; it leaves them zeroed). A layer keeps one."""
    return torch.zeros(DECODE_LAYER_COUNTER_SLOTS + n_kv_heads, dtype=torch.int32, device=device)


def check_decode_layer(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, w_gate_up: torch.Tensor,
                       w_down: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                       cos: torch.Tensor, sin: torch.Tensor, counters: torch.Tensor | None,
                       n_heads: int) -> tuple[int, int, int, int, int, int]:
    """Validate :func:`decode_layer`'s arguments; returns (D, F, H, KVH, Dh, L)."""
    D = x.shape[-1]
    if x.numel() != D or x.stride(-1) != 1:
        raise ShapeError(f"decode_layer: one token of one row, x (1, 1, D) with unit stride; got {tuple(x.shape)} "
                         f"strides {x.stride()}")
    if k_cache.dim() != 4 or k_cache.shape[0] != 1 or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ShapeError(f"decode_layer: k_cache and v_cache should both be (1, KVH, L, Dh), got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    _, KVH, L, Dh = k_cache.shape
    if n_heads <= 0 or n_heads % KVH:
        raise ShapeError(f"decode_layer: n_heads={n_heads} must be a positive multiple of the cache's KVH={KVH}")
    H = n_heads
    if Dh % 2:
        raise ShapeError(f"decode_layer: RoPE needs an even head dim, got {Dh}")
    FF = w_down.shape[-1] if w_down.dim() == 2 else -1
    expected = {"w_qkv": (H * Dh + 2 * KVH * Dh, D), "w_o": (D, H * Dh), "w_gate_up": (2 * FF, D),
                "w_down": (D, FF)}
    for name, t in (("w_qkv", w_qkv), ("w_o", w_o), ("w_gate_up", w_gate_up), ("w_down", w_down)):
        if tuple(t.shape) != expected[name]:
            raise ShapeError(f"decode_layer: {name} should be {expected[name]} (D={D}, H={H}, KVH={KVH}, Dh={Dh}, "
                             f"F from w_down), got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
            raise ShapeError(f"decode_layer: {name} must be contiguous {x.dtype} on {x.device} like x, got "
                             f"{t.dtype} on {t.device}{'' if t.is_contiguous() else ', not contiguous'}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.device != x.device or t.stride(-1) != 1 or t.dtype != x.dtype:
            raise ShapeError(f"decode_layer: {name} must be a {x.dtype} buffer (x's dtype) on {x.device} with unit "
                             f"stride in Dh, got {t.dtype} on {t.device} with strides {t.stride()}")
    if tuple(lens.shape) != (1,) or lens.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"decode_layer: lens should be (1,) int32/int64 (the row's length with the new token), "
                         f"got {tuple(lens.shape)} {lens.dtype}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.numel() != Dh or not t.is_contiguous():
            raise ShapeError(f"decode_layer: {name} should be the new position's {Dh} contiguous angles, got "
                             f"{tuple(t.shape)}")
    n_counters = DECODE_LAYER_COUNTER_SLOTS + KVH
    if counters is not None and (counters.dtype != torch.int32 or counters.numel() < n_counters
                                 or counters.device != x.device):
        raise ShapeError(f"decode_layer: counters should be a zeroed int32 buffer of at least {n_counters} entries "
                         f"(decode_layer_counters) on {x.device}, got {counters.numel()} {counters.dtype} on "
                         f"{counters.device}")
    return D, FF, H, KVH, Dh, L


def decode_layer(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, w_gate_up: torch.Tensor,
                 w_down: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, counters: torch.Tensor | None = None, *, n_heads: int,
                 eps_attn: float, eps_mlp: float, scale: float | None = None) -> torch.Tensor:
    """A pre-norm Llama layer with folded norms (``tensor.folded``) for one token of one row, as the unfused decode
    step computes it: ``h = x + o(attention(rope(q), rope(k), v))`` with q/k/v = ``linear(x, w_qkv, rms_eps)``
    (the new key and value written to slot ``lens - 1`` of the caches, in place), then
    ``h + down(swiglu(gate, up))`` with gate/up = ``linear(h, w_gate_up, rms_eps)`` (gate rows first). x (1, 1, D);
    caches (1, KVH, L, Dh); ``lens`` (1,) the row's length with the new token; cos/sin the new position's (Dh,)
    angles. ``counters``: the Triton kernel's zeroed workspace (:func:`decode_layer_counters`); unused here."""
    D, _, H, KVH, Dh, _ = check_decode_layer(x, w_qkv, w_o, w_gate_up, w_down, k_cache, v_cache, lens, cos, sin,
                                             counters, n_heads)
    xr = x.reshape(1, D)
    qkv = linear(xr, w_qkv, rms_eps=eps_attn)
    q, k, v = qkv.split([H * Dh, KVH * Dh, KVH * Dh], -1)
    o = decode_attention(q.view(1, H, Dh), k_cache, v_cache, lens, scale=scale, k_new=k.view(1, KVH, Dh),
                         v_new=v.view(1, KVH, Dh), cos_BDh=cos.reshape(1, Dh), sin_BDh=sin.reshape(1, Dh))
    h = linear(o.reshape(1, H * Dh), w_o, residual=xr)
    gate, up = linear(h, w_gate_up, rms_eps=eps_mlp).chunk(2, -1)
    return linear(swiglu(gate, up), w_down, residual=h).view(x.shape)
