"""The one-row gemv's hoisted second K step (``kernel.triton.gemv``, ``$LMSTACK_GEMV_HOIST``, kernel 0.21): where a
row takes two K steps and a thread holds few enough of the second's weights, they and the second step's x are asked
for with the first step's x after the PDL wait, instead of after the first step's products. The rule, the values
(under Triton's interpreter on a CPU, on the GPU with CUDA) and the sm90 code compiled offline."""

from __future__ import annotations

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError

triton = pytest.importorskip("triton")

from test_gemv import _inputs  # noqa: E402
from triton_testing import DTYPES, check, compile_offline  # noqa: E402

from kernel.triton import gemv as gemv_mod  # noqa: E402


def test_hoist_rule_takes_rows_of_two_steps_that_fit(monkeypatch):
    """"two" (the default) hoists rows of exactly two K steps whose second step's weights come to at most
    HOIST_BYTES a thread, of any dtype; "off" never; anything else is refused by name."""
    wb, w8, wf = (torch.zeros(1, 1, dtype=d) for d in (torch.bfloat16, torch.int8, torch.float32))
    monkeypatch.delenv(gemv_mod.HOIST_ENV, raising=False)
    assert gemv_mod._hoist(wb, 4, 1024, 4, 2048)  # the 1.1B bf16 q/k/v and o: 4 * 1024 * 2 / 128 = 64 bytes
    assert gemv_mod._hoist(w8, 4, 1024, 4, 2048) and gemv_mod._hoist(wb, 2, 128, 1, 129)
    assert not gemv_mod._hoist(wb, 4, 2048, 8, 5632)  # the down projection's three steps (run CD: slower)
    assert not gemv_mod._hoist(wb, 4, 2048, 4, 2048)  # one step: nothing to hoist
    assert gemv_mod._hoist(wf, 4, 2048, 8, 4096)  # fp32: 4 * 2048 * 4 / 256 = 128 bytes, at the limit
    assert not gemv_mod._hoist(wf, 8, 2048, 8, 4096) and not gemv_mod._hoist(wb, 16, 1024, 4, 2048)  # 256 bytes
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "off")
    assert not gemv_mod._hoist(wb, 4, 1024, 4, 2048)
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "all")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_HOIST.*'two', 'off'.*got 'all'"):
        gemv_mod._hoist(wb, 4, 1024, 4, 2048)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("int8, glu", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("K", [200, 256])  # two steps of 128 columns, the second ragged or whole
def test_a_hoisted_second_step_computes_what_a_step_at_a_time_does(monkeypatch, dtype, int8, glu, K):
    """The second step loaded with the first step's x gives the bits of a step at a time under Triton's
    interpreter (the same products summed in the same order), and within a rounding of the reference on a GPU;
    with a folded RMSNorm, int8 scales, the residual or a fused gate/up's SwiGLU."""
    N = 40
    x, w, s, b, r = _inputs(dtype, N, K, seed=K + 3 * int8 + glu, int8=int8)
    config = (2, 128, 1)
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "two")
    assert gemv_mod._hoist(w, *config, K)
    got = {}
    for mode in ("off", "two"):
        monkeypatch.setenv(gemv_mod.HOIST_ENV, mode)
        got[mode] = gemv_mod.gemv(x, w, s, None if int8 else b, config=config, rms_eps=1e-5,
                                  residual=None if glu else r, glu=glu)
    if not torch.cuda.is_available():
        assert torch.equal(got["off"], got["two"])
    if glu:
        lin = ref.int8_linear(x.float(), w, s.float(), rms_eps=1e-5).to(dtype).float()
        gate, up = lin.chunk(2, dim=-1)
        want32 = torch.nn.functional.silu(gate) * up
        check("gemv", got["two"], want32, want32.to(dtype), dtype, fp32_atol=2e-4)
    elif int8:
        want32 = ref.int8_linear(x.float(), w, s.float(), rms_eps=1e-5, residual=r.float())
        check("gemv", got["two"], want32, ref.int8_linear(x, w, s, rms_eps=1e-5, residual=r), dtype, fp32_atol=2e-4)
    else:
        want32 = ref.linear(x.float(), w.float(), b.float(), rms_eps=1e-5, residual=r.float())
        check("gemv", got["two"], want32, ref.linear(x, w, b, rms_eps=1e-5, residual=r), dtype, fp32_atol=2e-4)


def test_a_persistent_grid_hoists_each_row_block(monkeypatch):
    """A persistent grid's programs hoist the second step of every row block they loop over (the bf16 q/k/v and o
    tiles of the H200 table are persistent)."""
    x, w, _, b, r = _inputs(torch.bfloat16, 64, 200, seed=5)
    got = {}
    for mode in ("off", "two"):
        monkeypatch.setenv(gemv_mod.HOIST_ENV, mode)
        got[mode] = gemv_mod.gemv(x, w, None, b, config=(4, 128, 1, 0, 1), residual=r)
    if not torch.cuda.is_available():
        assert torch.equal(got["off"], got["two"])
    want32 = ref.linear(x.float(), w.float(), b.float(), residual=r.float())
    check("gemv", got["two"], want32, ref.linear(x, w, b, residual=r), torch.bfloat16, fp32_atol=2e-4)


_AOT_HOIST = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps", "NS")}
sig = dict(zip(names, ["*bf16"] * 6 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
# the 1.1B bf16 q/k/v projection as a decode step calls it (K 2,048 in two steps of 1,024, the RMSNorm folded, a
# program a row block) at the H200 table's tile
for hoist in (False, True):
    consts = dict(HAS_SCALE=False, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=False, ROWS=4, BLOCK_K=1024, PDL=1,
                  I8_MAGIC=False, PERSISTENT=False, I8_F16=0, LATE=False, WVEC=0, HOIST=hoist, ATT=0)
    src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": True})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_a_hoisted_second_step_compiled_for_sm90_is_asked_for_before_the_first_products():
    """Compiled offline for sm90: a step at a time, only x's first step (one 16-byte load a thread) is asked for
    between the PDL wait and the first products; hoisted, the second step's weights (four rows of 16 bytes a
    thread) and x come with it."""
    import re

    stepwise, hoisted, _ = compile_offline(_AOT_HOIST).split("\n=====\n")

    def early_loads(ptx):
        lines = ptx.splitlines()
        wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
        math = next(i for i, line in enumerate(lines) if i > wait and re.search(r"\bfma\.rn\.f32|\bmul\.f32", line))
        loads = [i for i, line in enumerate(lines) if re.search(r"ld\.global(\.\w+)*\.v4\.b32", line)]
        return sum(wait < i < math for i in loads)

    assert (early_loads(stepwise), early_loads(hoisted)) == (1, 6), (early_loads(stepwise), early_loads(hoisted))
