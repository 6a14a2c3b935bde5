"""The one-row gemv's hoisted K steps (``kernel.triton.gemv``, ``$LMSTACK_GEMV_HOIST``, kernel 0.21): where a row
takes 2-4 K steps and a thread holds few enough of their weights, every later step's weights and x are asked for at
once after the PDL wait, instead of each step's loads following the products of the one before. The rule, the
values (under Triton's interpreter on a CPU, on the GPU with CUDA) and the sm90 code compiled offline."""

from __future__ import annotations

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError

triton = pytest.importorskip("triton")

from test_gemv import _inputs  # noqa: E402
from triton_testing import DTYPES, check  # noqa: E402

from kernel.triton import gemv as gemv_mod  # noqa: E402


def test_hoist_rule_counts_steps_and_bytes_a_thread_holds(monkeypatch):
    """"int8" hoists int8 rows only, "all" every dtype; either only for 2-4 K steps whose later steps' weights come
    to at most HOIST_BYTES a thread; "off" (the default) never; anything else is refused by name."""
    w8, wb = torch.zeros(1, 1, dtype=torch.int8), torch.zeros(1, 1, dtype=torch.bfloat16)
    monkeypatch.delenv(gemv_mod.HOIST_ENV, raising=False)
    assert gemv_mod._hoist(w8, 4, 2048, 8, 5632) == 0
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "int8")
    assert gemv_mod._hoist(w8, 4, 2048, 8, 5632) == 3  # the 1.1B down projection: 4 * 2048 * 2 / 256 = 64 bytes
    assert gemv_mod._hoist(wb, 4, 2048, 8, 5632) == 0  # bf16 weights are not int8
    assert gemv_mod._hoist(w8, 32, 512, 4, 2048) == 0  # int8 gate/up: 32 * 512 * 3 / 128 = 384 bytes a thread
    assert gemv_mod._hoist(w8, 4, 2048, 4, 2048) == 0  # one step: nothing to hoist
    assert gemv_mod._hoist(w8, 1, 64, 1, 320) == 0  # five steps
    assert gemv_mod._hoist(w8, 1, 64, 1, 256) == 4 and gemv_mod._hoist(w8, 1, 64, 1, 65) == 2
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "all")
    assert gemv_mod._hoist(wb, 4, 2048, 8, 5632) == 3  # 128 bytes: at the limit
    assert gemv_mod._hoist(wb, 8, 2048, 8, 5632) == 0  # 256 bytes
    assert gemv_mod._hoist(torch.zeros(1, 1), 4, 2048, 8, 5632) == 0  # fp32 weights: 256 bytes
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "on")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_HOIST.*'off', 'int8', 'all'.*got 'on'"):
        gemv_mod._hoist(w8, 4, 2048, 8, 5632)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("int8, glu", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("K", [200, 300, 512])  # 2, 3 and 4 steps of 128 columns
def test_hoisted_steps_compute_what_a_step_at_a_time_does(monkeypatch, dtype, int8, glu, K):
    """Every later step loaded at once gives the bits of a step at a time under Triton's interpreter (the same
    products summed in the same order), and within a rounding of the reference on a GPU; with a folded RMSNorm,
    int8 scales, the residual or a fused gate/up's SwiGLU, and a ragged last step."""
    N = 40
    x, w, s, b, r = _inputs(dtype, N, K, seed=K + 3 * int8 + glu, int8=int8)
    config = (2, 128, 1)  # fp32 weights: 2 * 128 * 3 * 4 / 32 = 96 bytes a thread at four steps
    monkeypatch.setenv(gemv_mod.HOIST_ENV, "all")
    steps = gemv_mod._hoist(w, *config, K)
    assert steps == -(-K // 128), steps
    got = {}
    for mode in ("off", "all"):
        monkeypatch.setenv(gemv_mod.HOIST_ENV, mode)
        got[mode] = gemv_mod.gemv(x, w, s, None if int8 else b, config=config, rms_eps=1e-5,
                                  residual=None if glu else r, glu=glu)
    if not torch.cuda.is_available():
        assert torch.equal(got["off"], got["all"])
    if glu:
        lin = ref.int8_linear(x.float(), w, s.float(), rms_eps=1e-5).to(dtype).float()
        gate, up = lin.chunk(2, dim=-1)
        want32 = torch.nn.functional.silu(gate) * up
        check("gemv", got["all"], want32, want32.to(dtype), dtype, fp32_atol=2e-4)
    elif int8:
        want32 = ref.int8_linear(x.float(), w, s.float(), rms_eps=1e-5, residual=r.float())
        check("gemv", got["all"], want32, ref.int8_linear(x, w, s, rms_eps=1e-5, residual=r), dtype, fp32_atol=2e-4)
    else:
        want32 = ref.linear(x.float(), w.float(), b.float(), rms_eps=1e-5, residual=r.float())
        check("gemv", got["all"], want32, ref.linear(x, w, b, rms_eps=1e-5, residual=r), dtype, fp32_atol=2e-4)


def test_a_persistent_grid_hoists_each_row_block(monkeypatch):
    """A persistent grid's programs hoist the later steps of every row block they loop over."""
    x, w, s, _, r = _inputs(torch.bfloat16, 64, 300, seed=5, int8=True)
    got = {}
    for mode in ("off", "int8"):
        monkeypatch.setenv(gemv_mod.HOIST_ENV, mode)
        got[mode] = gemv_mod.gemv(x, w, s, config=(4, 128, 1, 0, 1), residual=r)
    if not torch.cuda.is_available():
        assert torch.equal(got["off"], got["int8"])
    want32 = ref.int8_linear(x.float(), w, s.float(), residual=r.float())
    check("gemv", got["int8"], want32, ref.int8_linear(x, w, s, residual=r), torch.bfloat16, fp32_atol=2e-4)


_AOT_HOIST = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps")}
sig = dict(zip(names, ["*bf16", "*i8"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]))
# the 1.1B down projection as a decode step calls it (K 5,632 in three steps of 2,048, the residual added, PDL
# triggering early) at the H200 table's tile
for hoist in (0, 3):
    consts = dict(HAS_SCALE=True, HAS_BIAS=False, RMS=False, HAS_RES=True, GLU=False, ROWS=4, BLOCK_K=2048, PDL=2,
                  I8_MAGIC=False, PERSISTENT=False, I8_F16=2, LATE=False, WVEC=0, HOIST=hoist)
    src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "launch_pdl": True})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_hoisted_int8_steps_compiled_for_sm90_are_asked_for_before_x_is_shuffled():
    """Compiled offline for sm90: a step at a time, the later steps' int8 weights are loaded only after the first
    step's x has arrived and been moved through shared memory (each behind a barrier); hoisted, all four of their
    16-byte loads a thread (two steps of 32 bytes) come between the PDL wait and the first shared-memory store."""
    import os
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", _AOT_HOIST], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stepwise, hoisted, _ = out.stdout.split("\n=====\n")

    def early_loads(ptx):
        lines = ptx.splitlines()
        wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
        shuffle = next(i for i, line in enumerate(lines) if i > wait and re.search(r"\bst\.shared|\bstmatrix", line))
        loads = [i for i, line in enumerate(lines) if re.search(r"ld\.global(\.\w+)*\.v4\.b32", line)]
        return sum(wait < i < shuffle for i in loads)

    # before the shuffle: x's own first-step load (one 16-byte vector a thread) and, hoisted, the weights' four; the
    # Triton 3.9 here also puts x's two later loads there, the cards' 3.6 after the first shuffle
    early = early_loads(stepwise), early_loads(hoisted)
    assert early[0] == 1 and early[1] - early[0] in (4, 6), early
