"""The unified-shift decode attention's pieces (``decode_attention.decode_attention_unified``, kernel 0.22): the
per-split accumulation its kernel runs, and the workspace of per-layer accumulators that the calls share.

The slot splits of a head's flash-decoding share one softmax shift (FlashDecoding++'s unified max, Hong et al.
2023): the larger of the scores of the new token's own key and of slot 0's, which every split computes alike. Each
split adds its partial, rescaled to that shift, to fp32 accumulators by atomics, so no kernel combines the splits:
the output projection divides the outputs by the sums as it reads them (``kernel.triton.gemv``'s ``att``;
``kernel.reference.unified_output`` in torch ops). Every call zeroes the next layer's accumulators for that layer's
next use. A split whose own max passes the shift by more than ``UNIFIED_T`` nats flags its row, and the reader then
combines the splits' stored partials instead (exact in all cases; the flag only costs time). The workspace's helpers
(``unified_workspace``, ``unified_width``, ``check_unified``) are torch code in ``kernel.reference``, imported here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import triton
import triton.language as tl

from kernel.reference import check_unified, unified_width, unified_workspace
from specs.errors import ConfigError

__all__ = ["UNIFIED_T", "UNIFIED_TIMING_ENV", "check_unified", "timing_without_atomics", "unified_mode",
           "unified_width", "unified_workspace"]

# unified shift (:func:`_unified`): a split whose own max passes the shared shift by more than this (in nats) flags
# its row, whose reader then combines the stored partials; below it the shifted sums stay within a factor e^30 of
# the per-split ones (1e13; fp32 holds 3e38)
UNIFIED_T = tl.constexpr(30.0)
# "scalar": the unified attention's outputs added a value an atomic (the (heads, Dh) block), for comparisons
UNIFIED_TIMING_ENV = "LMSTACK_UNIFIED_TIMING"
_without_atomics = False  # set only by :func:`timing_without_atomics`, which a benchmark enters


@contextlib.contextmanager
def timing_without_atomics() -> Iterator[None]:
    """For a benchmark pricing the atomics: the unified attention launched inside adds nothing by atomics, so its
    sums are wrong (and a CUDA graph captured inside replays that form: a benchmark's own layers only). Not an
    environment variable, so no deployment can switch it on."""
    global _without_atomics
    saved, _without_atomics = _without_atomics, True
    try:
        yield
    finally:
        _without_atomics = saved


@triton.jit
def _unified_shift(q, kn, k_first, n, scale):
    """The unified shift of each head (BLOCK_G,): the larger of the scores of the new token's own key ``kn`` and of
    slot 0's (``k_first``; at n = 1 slot 0 is the new token), which every split computes alike from the same q and
    keys."""
    qf = q.to(tl.float32)
    kf = tl.where(n > 1, k_first.to(tl.float32), kn.to(tl.float32))
    s_self = tl.sum(qf * kn.to(tl.float32)[None, :], 1)
    s_first = tl.sum(qf * kf[None, :], 1)
    return (tl.maximum(s_self, s_first) * scale).to(tl.float32)  # scale may come as fp64


@triton.jit
def _unified(ws_ptr, zero_ptr, WS, b, kvh, split, h, d, g_ok, d_ok, phi, lo, hi, m_i, l_i, acc, G, H, Dh,
             BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, UNIFIED: tl.constexpr):
    """A split's share of its heads' attention against one shift ``phi`` for every split of a head (FlashDecoding++'s
    unified max, Hong et al. 2023; :func:`_unified_shift`). Its partial (running max ``m_i``, sum ``l_i``, output
    ``acc``), scaled by exp(m_i - phi), is added to row b's accumulators in ``ws_ptr`` (H x Dh outputs, then H
    sums), so the reader divides the one by the other with no combine pass. phi is a real score of the row, so each
    sum is at least ~1 (nothing underflows); a split whose own max passes phi by more than UNIFIED_T sets the row's
    flag, and the reader then combines the stored partials instead. UNIFIED 2 adds the outputs as
    one flat run of G x Dh values (Dh = BLOCK_D), which Triton issues four a vector atomic; 1 as the (heads, Dh)
    block, a value an atomic; 3 not at all (timing only). The first split of each (row, KV head) zeroes its heads'
    entries of ``zero_ptr`` (the flag with KV head 0's)."""
    row = ws_ptr + b * WS
    if (hi > lo) & (UNIFIED != 3):  # an empty chunk adds nothing (UNIFIED 3: no atomics, to time them; wrong sums)
        c = tl.exp(m_i - phi)
        gd_ok = g_ok[:, None] & d_ok[None, :]
        if UNIFIED == 2:  # Dh = BLOCK_D: the heads' outputs are one run of G x Dh, added four a vector reduction
            i = tl.arange(0, BLOCK_G * BLOCK_D)
            tl.atomic_add(row + kvh * G * Dh + i, tl.reshape(acc * c[:, None], (BLOCK_G * BLOCK_D,)),
                          mask=i < G * Dh, sem="relaxed")
        else:
            tl.atomic_add(row + h[:, None] * Dh + d[None, :], acc * c[:, None], mask=gd_ok, sem="relaxed")
        tl.atomic_add(row + H * Dh + h, l_i * c, mask=g_ok, sem="relaxed")
        tl.store(row + H * Dh + H + 0 * h, tl.full((BLOCK_G,), 1.0, tl.float32),
                 mask=g_ok & (m_i - phi > UNIFIED_T))
    if split == 0:
        zrow = zero_ptr + b * WS
        tl.store(zrow + h[:, None] * Dh + d[None, :], tl.zeros((BLOCK_G, BLOCK_D), tl.float32),
                 mask=g_ok[:, None] & d_ok[None, :])
        tl.store(zrow + H * Dh + h, tl.zeros((BLOCK_G,), tl.float32), mask=g_ok)
        if kvh == 0:
            tl.store(zrow + H * Dh + H, 0.0)


def unified_mode(flat: bool) -> int:
    """The kernel's UNIFIED: 2 (the outputs added as one flat run, which Triton issues four values an atomic; needs
    a power-of-two head dim, ``flat``), 1 (added as the (heads, Dh) block, one value an atomic; or
    ``$LMSTACK_UNIFIED_TIMING=scalar``), 3 (no atomics, so wrong sums: only inside :func:`timing_without_atomics`,
    to price them in a benchmark)."""
    timing = os.environ.get(UNIFIED_TIMING_ENV, "")
    if timing not in ("", "scalar"):
        raise ConfigError(UNIFIED_TIMING_ENV, f"expected 'scalar' (one value an atomic) or unset, got {timing!r}")
    if _without_atomics:
        return 3
    return 2 if flat and timing != "scalar" else 1
