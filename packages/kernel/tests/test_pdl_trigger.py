"""Where a PDL-launched kernel lets the next one launch ($LMSTACK_PDL_TRIGGER, kernel.triton._pdl): after its wait
(``late``) or before it (``early``) in the gemv and in decode attention's split and combine kernels (their sm90
code compiled offline); ``mixed``, the default, early but in a gemv of float weights; a bad value refused by name."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from triton_testing import compile_offline

from kernel.triton import _pdl  # (needs triton)
from specs.errors import ConfigError

_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import decode_attention as da, gemv
from triton_testing import DECODE_ARG_NAMES as names, DECODE_ARG_TYPES as types
target = GPUTarget("cuda", 90, 32)
gnames = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
gsig = dict(zip(gnames, ["*bf16", "*i8"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
cnames = ["acc_ptr", "m_ptr", "l_ptr", "o_ptr", "stride_ob", "stride_oh", "H", "NS", "Dh"]
csig = dict(zip(cnames, ["*fp32"] * 3 + ["*bf16"] + ["i32"] * 5))
for pdl in (1, 2):
    consts = dict(HAS_SCALE=True, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=True, ROWS=32, BLOCK_K=512, PDL=pdl,
                  I8_MAGIC=False, PERSISTENT=False, I8_F16=2, LATE=False, WVEC=0, HOIST=0, ATT=0)
    kernels = [(gemv._gemv, gsig, consts)]
    consts = dict(PAGED=False, PAGE=1, DOT=1, SPLIT=True, NEW=True, ROPE=True, COMBINE=False, BLOCK_G=16,
                  BLOCK_S=16, BLOCK_D=64, BLOCK_N=32, PDL=pdl, EARLY=True, ROPE_AT_POS=True, UNIFIED=False)
    kernels.append((da._decode, dict(zip(names, types)), consts))
    kernels.append((da._combine, csig, dict(BLOCK_N=32, BLOCK_D=64, PDL=pdl)))
    for fn, sig, consts in kernels:
        src = triton.compiler.ASTSource(fn=fn, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                        constexprs=consts)
        ptx = triton.compile(src, target=target, options={"num_warps": 4, "launch_pdl": True}).asm["ptx"]
        sys.stdout.write(ptx + "\\n=====\\n")
"""


def test_the_trigger_follows_the_wait_when_late_and_precedes_it_when_early():
    ptxs = compile_offline(_AOT).split("\n=====\n")[:-1]
    assert len(ptxs) == 6  # three kernels, each late then early
    for i, ptx in enumerate(ptxs):  # gemv, attention's split kernel, its combine; late (1) then early (2)
        lines = ptx.splitlines()
        wait = [n for n, line in enumerate(lines) if "griddepcontrol.wait" in line]
        launch = [n for n, line in enumerate(lines) if "griddepcontrol.launch_dependents" in line]
        assert len(wait) == 1 and len(launch) == 1
        assert (launch[0] < wait[0]) == (i >= 3)
    # early, the gemv's first weight block is still asked for before the trigger: its loads go out first
    gemv_early = ptxs[3].splitlines()
    first_load = next(n for n, line in enumerate(gemv_early) if "ld.global" in line)
    assert first_load < next(n for n, line in enumerate(gemv_early) if "griddepcontrol.launch_dependents" in line)


def test_the_trigger_mode_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(_pdl.TRIGGER_ENV, raising=False)  # unset: mixed
    assert (_pdl.pdl_mode(False), _pdl.pdl_mode(True), _pdl.pdl_mode(True, early_when_mixed=False)) == (0, 2, 1)
    monkeypatch.setenv(_pdl.TRIGGER_ENV, "early")
    assert (_pdl.pdl_mode(False), _pdl.pdl_mode(True)) == (0, 2)
    assert _pdl.pdl_mode(True, early_when_mixed=False) == 2
    monkeypatch.setenv(_pdl.TRIGGER_ENV, "mixed")  # early but in a gemv of float weights
    assert (_pdl.pdl_mode(False), _pdl.pdl_mode(True), _pdl.pdl_mode(True, early_when_mixed=False)) == (0, 2, 1)
    monkeypatch.setenv(_pdl.TRIGGER_ENV, "late")
    assert _pdl.pdl_mode(True) == 1
    monkeypatch.setenv(_pdl.TRIGGER_ENV, "soon")
    with pytest.raises(ConfigError, match="LMSTACK_PDL_TRIGGER.*'late'.*'early'.*'mixed'.*'soon'"):
        _pdl.pdl_mode(True)


def test_mixed_triggers_the_int8_gemv_early_and_the_float_gemv_late(monkeypatch):
    import torch

    from kernel.triton import gemv as g

    seen = []

    class Launcher:  # records the PDL constexpr each launch asks for
        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(kw["PDL"])

    monkeypatch.setattr(g, "_gemv", Launcher())
    monkeypatch.setattr(g, "pdl_capable", lambda x: True)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    w_bf16 = torch.randn(32, 64, dtype=torch.bfloat16)
    w_int8 = torch.randint(-128, 128, (32, 64), dtype=torch.int8)
    for mode in (None, "mixed", "late", "early"):
        if mode is None:
            monkeypatch.delenv(_pdl.TRIGGER_ENV, raising=False)
        else:
            monkeypatch.setenv(_pdl.TRIGGER_ENV, mode)
        g.gemv(x, w_bf16, config=(4, 64, 1, 1), pdl=True)
        g.gemv(x, w_int8, torch.ones(32), config=(4, 64, 1, 1), pdl=True)
        g.gemv(x, w_int8, torch.ones(32), config=(4, 64, 1, 1), pdl=False)
    assert seen == [1, 2, 0, 1, 2, 0, 1, 1, 0, 2, 2, 0]
