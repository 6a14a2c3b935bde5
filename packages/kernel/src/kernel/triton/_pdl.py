"""Where a kernel launched with programmatic dependent launch (PDL, sm90+) lets the next one start.

A PDL-launched kernel waits (``griddepcontrol.wait``) before it reads anything the kernel before it wrote, and
lets the next kernel launch (``griddepcontrol.launch_dependents``). The next kernel's programs then start while this
one runs, and load what does not depend on it (a matmul's weights); its own wait still waits for this kernel to
finish and for its writes to be visible, wherever the trigger sits. So the trigger's place changes scheduling only:
after the wait (``late``, the default) at most two kernels of a chain are resident at once; before it (``early``)
a kernel lets the next launch as soon as its own programs have issued their first loads, so the next can trigger
the one after it too, and several kernels' weights stream while the one running waits on memory latency (attention,
its combine, kernel boundaries). A later kernel's programs launch only once every program of the kernel before has
triggered, so each kernel is wholly resident before the next takes SM slots: no kernel waits for slots that a later
one holds. ``$LMSTACK_PDL_TRIGGER`` (``late`` or ``early``) picks, for comparisons; the decode gemv
(:mod:`kernel.triton.gemv`) and decode attention (:mod:`kernel.triton.decode_attention`) follow it.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from specs.errors import ConfigError

TRIGGER_ENV = "LMSTACK_PDL_TRIGGER"


def pdl_mode(pdl: bool) -> int:
    """A kernel's PDL constexpr: 0 without PDL, 1 triggering the next kernel after the wait, 2 before it
    (``$LMSTACK_PDL_TRIGGER=early``)."""
    raw = os.environ.get(TRIGGER_ENV, "late")
    if raw not in ("late", "early"):
        raise ConfigError(TRIGGER_ENV, f"expected 'late' (the default: the next kernel launches once this one has "
                                       f"waited) or 'early' (before it waits), got {raw!r}")
    return 0 if not pdl else 2 if raw == "early" else 1


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
