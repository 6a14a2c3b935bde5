"""Asking L2 for bytes a later kernel will read (experiment: docs/benchmarks.md, session 21).

In a batch-1 decode step the memory bus idles while latency-bound work runs (attention, its combine, a gemv whose
weights come from L2). A kernel there can ask L2 for the next kernel's weights, one 128-byte line a thread an
instruction (``prefetch.global.L2::evict_last``: no register takes the data, so nothing in the program waits for
it, unlike a bulk prefetch, run BG), so that the next kernel reads them from L2.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LINE = tl.constexpr(128)
# lines a loop step of the program asks for (four a thread for four warps)
LINES = tl.constexpr(512)
# which kernels prefetch for the next one ($LMSTACK_L2_CHAIN, comma-separated): "attn" (decode attention: the
# MLP's gate/up weight), "gemv" (a gemv: the weight the next gemv reads, as registered in NEXT); "" none
CHAIN_ENV = "LMSTACK_L2_CHAIN"
# a gemv's weight (data_ptr) -> the weight the kernel after it reads, set by a decode loop (serve.FastGenerator)
NEXT: dict[int, torch.Tensor] = {}


def chain() -> set[str]:
    return {s for s in os.environ.get(CHAIN_ENV, "attn").split(",") if s}


def share(t: torch.Tensor | None, programs: int, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(a byte view of ``t`` or ``like``, its bytes, bytes a program in whole lines) for ``programs``."""
    if t is None or not like.is_cuda:
        return like, 0, 0
    nbytes = t.numel() * t.element_size() // 16 * 16
    return t.reshape(-1).view(torch.uint8), nbytes, triton.cdiv(triton.cdiv(nbytes, programs), LINE.value) * LINE.value


@triton.jit
def prefetch_lines(pf_ptr, first, last):
    """Bytes ``first .. last - 1`` of ``pf_ptr`` asked of L2, a line a thread an instruction, evict-last."""
    for c0 in range(first, last, LINES * LINE):
        off = c0 + tl.arange(0, LINES) * LINE
        tl.inline_asm_elementwise(
            asm="""{
            .reg .pred p;
            setp.ne.s32 p, $2, 0;
            @p prefetch.global.L2::evict_last [$1];
            mov.u32 $0, 0;
            }""",
            constraints="=r,l,r", args=[pf_ptr + off.to(tl.int64), (off < last).to(tl.int32)], dtype=tl.int32,
            is_pure=False, pack=1)
