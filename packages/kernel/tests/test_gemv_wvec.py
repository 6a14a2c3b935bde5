"""The one-row gemv's int8 weight vectors (``kernel.triton.gemv``, ``$LMSTACK_GEMV_WVEC``, kernel 0.20): 8 bytes a
vector where one K step covers the row and a thread's share of it holds a whole vector of x, so the weight block's
column slice is x's own load layout and x needs no shuffle through shared memory; 16 bytes elsewhere. The rule, the
values (under Triton's interpreter on a CPU, on the GPU with CUDA) and the sm90 code compiled offline."""

from __future__ import annotations

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError

triton = pytest.importorskip("triton")

from test_gemv import _inputs  # noqa: E402
from triton_testing import check, compile_offline  # noqa: E402

from kernel.triton import gemv as gemv_mod  # noqa: E402


def test_int8_weight_vectors_follow_x_where_one_step_covers_the_row(monkeypatch):
    """$LMSTACK_GEMV_WVEC: 8-byte int8 weight vectors where one K step covers the row and a thread's share of it
    holds a whole 16-byte vector of bf16 or fp16 x ("x", the default); 16 bytes elsewhere, for float weights, fp32
    x, and always under "wide"; anything else is refused by name."""
    w8, wf = torch.zeros(4, 2048, dtype=torch.int8), torch.zeros(4, 2048)
    xb, xf = torch.bfloat16, torch.float32
    monkeypatch.delenv(gemv_mod.WVEC_ENV, raising=False)
    assert gemv_mod._wvec(w8, xb, 2048, 4, 2048) == 8  # q/k/v and o at the H200 table's (4, 2048, 4 warps)
    assert gemv_mod._wvec(w8, torch.float16, 2048, 8, 2048) == 8  # 2048 / 256 threads: one vector each
    assert gemv_mod._wvec(w8, xb, 2048, 8, 5632) == 0  # down: three K steps (run CA: slower)
    assert gemv_mod._wvec(w8, xb, 512, 4, 2048) == 0  # four bf16 values a thread: under a vector
    assert gemv_mod._wvec(wf, xf, 2048, 4, 2048) == 0 and gemv_mod._wvec(w8, xf, 2048, 4, 2048) == 0
    # x from a unified attention's fp32 sums (att): four-value weight vectors, float weights too, several K steps too
    assert gemv_mod._wvec(w8, xb, 2048, 4, 2048, att=True) == 4 == gemv_mod._wvec(wf, xb, 512, 4, 2048, att=True)
    assert gemv_mod._wvec(w8, xb, 256, 4, 2048, att=True) == 0  # two values a thread: under a vector
    monkeypatch.setenv(gemv_mod.WVEC_ENV, "wide")
    assert gemv_mod._wvec(w8, xb, 2048, 4, 2048) == 0 == gemv_mod._wvec(w8, xb, 2048, 4, 2048, att=True)
    monkeypatch.setenv(gemv_mod.WVEC_ENV, "att-wide")  # 16-byte vectors for the accumulators' calls only
    assert gemv_mod._wvec(w8, xb, 2048, 4, 2048, att=True) == 0 and gemv_mod._wvec(w8, xb, 2048, 4, 2048) == 8
    monkeypatch.setenv(gemv_mod.WVEC_ENV, "8")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_WVEC.*'x' .*'wide' .*'att-wide' .*got '8'"):
        gemv_mod._wvec(w8, xb, 2048, 4, 2048)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_weights_in_x_layout_give_the_reference(monkeypatch, dtype):
    """A one-step int8 row block loaded 8 bytes a vector ("x") computes what 16-byte vectors ("wide") do: the same
    bits under Triton's interpreter (the same values in the same order), within a rounding of the reference on a
    GPU (there the products are laid out, so summed, differently)."""
    N, K = 70, 256
    x, w, s, b, r = _inputs(dtype, N, K, seed=29, int8=True)
    assert gemv_mod._wvec(w, x.dtype, 256, 1, K) == 8  # 256 / 32 threads: one vector of x each
    got = {}
    for mode in ("wide", "x"):
        monkeypatch.setenv(gemv_mod.WVEC_ENV, mode)
        got[mode] = gemv_mod.gemv(x, w, s, None, config=(4, 256, 1), rms_eps=1e-5, residual=r)
    if not torch.cuda.is_available():
        assert torch.equal(got["wide"], got["x"])
    want32 = ref.int8_linear(x.float(), w, s.float(), rms_eps=1e-5, residual=r.float())
    check("gemv", got["x"], want32, ref.int8_linear(x, w, s, rms_eps=1e-5, residual=r), dtype, fp32_atol=2e-4)


_AOT_WVEC = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps", "NS")}
sig = dict(zip(names, ["*bf16", "*i8"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
# the o projection as a decode step calls it (the residual added, PDL triggering early) at the H200 table's tile
for wvec in (0, 8):
    consts = dict(HAS_SCALE=True, HAS_BIAS=False, RMS=False, HAS_RES=True, GLU=False, ROWS=4, BLOCK_K=2048, PDL=2,
                  I8_MAGIC=False, PERSISTENT=False, I8_F16=2, LATE=False, WVEC=wvec, HOIST=0, ATT=0)
    src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": True})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_int8_weights_in_x_layout_compiled_for_sm90_need_no_shuffle_of_x():
    """Compiled offline for sm90: with 16-byte vectors a thread holds 16 int8 columns of its rows and x (8 bf16 a
    vector) is moved into that layout through shared memory behind barriers; with 8-byte vectors (WVEC 8) the
    weight block's column slice is x's own load layout, so those stores and barriers are gone, and the weights are
    still all asked for before the PDL wait, twice as many loads of half the width."""
    import re

    wide, narrow, _ = compile_offline(_AOT_WVEC).split("\n=====\n")

    def shape(ptx):
        lines = ptx.splitlines()
        wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
        before = lambda width: sum(i < wait for i, line in enumerate(lines)
                                   if re.search(rf"ld\.global(\.\w+)*\.{width}\.b32", line))
        return (before("v4"), before("v2"), ptx.count("bar.sync"),
                len(re.findall(r"\bst\.shared|\bstmatrix", ptx)))

    (wide_v4, wide_v2, wide_bars, wide_st), (narrow_v4, narrow_v2, narrow_bars, narrow_st) = shape(wide), shape(narrow)
    # (4, 2048) int8 over 128 threads: 64 bytes a thread, four 16-byte or eight 8-byte loads before the wait
    assert (wide_v4, narrow_v2 - wide_v2) == (4, 8) and narrow_v4 == 0, (wide_v4, wide_v2, narrow_v4, narrow_v2)
    assert narrow_bars < wide_bars and narrow_st < wide_st, (wide_bars, narrow_bars, wide_st, narrow_st)
