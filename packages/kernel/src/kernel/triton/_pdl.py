"""Where a kernel launched with programmatic dependent launch (PDL, sm90+) lets the next one start.

A PDL-launched kernel waits (``griddepcontrol.wait``) before it reads anything the kernel before it wrote, and
lets the next kernel launch (``griddepcontrol.launch_dependents``). The next kernel's programs then start while this
one runs, and load what does not depend on it (a matmul's weights); its own wait still waits for this kernel to
finish and for its writes to be visible, wherever the trigger sits. So the trigger's place changes scheduling only:
after the wait (``late``) at most two kernels of a chain are resident at once; before it (``early``)
a kernel lets the next launch as soon as its own programs have issued their first loads, so the next can trigger
the one after it too, and several kernels' weights stream while the one running waits on memory latency (attention,
its combine, kernel boundaries). A later kernel's programs launch only once every program of the kernel before has
triggered, so each kernel is wholly resident before the next takes SM slots: no kernel waits for slots that a later
one holds. ``$LMSTACK_PDL_TRIGGER`` picks: ``mixed`` (the default: early everywhere but in a gemv of float
weights, which triggers late), or ``late`` or ``early`` everywhere, for comparisons. On an H200's batch-1 decode of
the 1.1B shape, early lets the int8 gemvs' chain run 2.5% faster than late; bf16's gains nothing from its gemvs
triggering early and lost 0.7% with them early, and mixed ran both at their best (docs/benchmarks.md, runs BK-BM).
The decode gemv (:mod:`kernel.triton.gemv`) and decode attention (:mod:`kernel.triton.decode_attention`) follow it.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from specs.errors import ConfigError

TRIGGER_ENV = "LMSTACK_PDL_TRIGGER"
TRIGGER_MODES = ("late", "early", "mixed")
TRIGGER_DEFAULT = "mixed"


def pdl_mode(pdl: bool, early_when_mixed: bool = True) -> int:
    """A kernel's PDL constexpr: 0 without PDL, 1 triggering the next kernel after the wait, 2 before it.
    ``$LMSTACK_PDL_TRIGGER``: ``late`` (1), ``early`` (2), or ``mixed``: 2 for a kernel that says
    ``early_when_mixed`` (decode attention, its combine, a gemv of int8 weights), else 1 (a gemv of float
    weights)."""
    raw = os.environ.get(TRIGGER_ENV, TRIGGER_DEFAULT)
    if raw not in TRIGGER_MODES:
        raise ConfigError(TRIGGER_ENV, f"expected 'late' (the next kernel launches once this one has waited), "
                                       f"'early' (before it waits) or 'mixed' (early but in a gemv of float "
                                       f"weights); unset means {TRIGGER_DEFAULT!r}; got {raw!r}")
    if not pdl:
        return 0
    return 2 if raw == "early" or (raw == "mixed" and early_when_mixed) else 1


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """Wait for the kernel before (PDL 1 or 2), letting the next kernel launch after the wait (1) or before it
    (2); nothing without PDL (0)."""
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
    if PDL:
        tl.extra.cuda.gdc_wait()
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()
