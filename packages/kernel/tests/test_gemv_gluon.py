"""The decode gemv in Gluon (``kernel.triton.gemv_gluon``, ``$LMSTACK_GEMV_IMPL=gluon``): which calls it takes, its
layouts against the Triton kernel's tiles, its sm90 code compiled offline (no barrier a K step, the PDL placement,
the first weights before the wait), and on a GPU its results against the references and the Triton kernel. Gluon
has no interpreter, so off a GPU the calls stay with the Triton kernel (checked here too)."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError

pytest.importorskip("triton")
gg = pytest.importorskip("kernel.triton.gemv_gluon")  # (needs triton.experimental.gluon)

from test_gemv import _inputs  # noqa: E402 (float or int8 weights, bias, residual)
from triton_testing import DEVICE, check, compile_offline  # noqa: E402

from kernel.triton import gemv as gemv_mod  # noqa: E402


def test_the_implementation_is_read_from_the_environment_and_other_values_refused_by_name(monkeypatch):
    monkeypatch.delenv(gemv_mod.IMPL_ENV, raising=False)
    assert gemv_mod.gemv_impl() == "triton"
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "gluon")
    assert gemv_mod.gemv_impl() == "gluon"
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "cuda")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_IMPL.*'triton'.*'gluon'.*'cuda'"):
        gemv_mod.gemv(torch.randn(1, 64), torch.randn(8, 64), config=(4, 64, 1))


@pytest.mark.parametrize("int8", [True, False])
def test_the_k_loops_x_source_is_per_weight_dtype_unless_set(monkeypatch, int8):
    monkeypatch.delenv(gg.X_ENV, raising=False)  # auto: staged for int8 weights, from global memory for float
    assert gg.x_source(int8) == ("smem" if int8 else "global")
    for value in ("smem", "global"):
        monkeypatch.setenv(gg.X_ENV, value)
        assert gg.x_source(int8) == value
    monkeypatch.setenv(gg.X_ENV, "tma")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_GLUON_X.*'auto'.*'smem'.*'global'.*'tma'"):
        gg.x_source(int8)


def test_x_staged_in_shared_memory_is_sized_by_its_steps_and_bounded():
    # a row of BLOCK_K a K step, the steps rounded up to a power of two; fp16 for int8 weights, else x's dtype
    assert gg.x_stage_bytes(5632, 2048, torch.bfloat16, True) == 4 * 2048 * 2
    assert gg.x_stage_bytes(2048, 256, torch.float32, False) == 8 * 256 * 4
    assert gg.x_stage_bytes(2048, 2048, torch.bfloat16, False) == 2048 * 2
    # the decode shapes' stages fit; a long fp32 row does not, and stays with the Triton kernel
    assert gg.x_stage_bytes(5632, 2048, torch.bfloat16, False) <= gg.X_STAGE_LIMIT
    assert gg.x_stage_bytes(32768, 1024, torch.float32, False) > gg.X_STAGE_LIMIT


def test_gluon_asked_for_without_gluon_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "gluon")
    import kernel.triton

    monkeypatch.setitem(sys.modules, "kernel.triton.gemv_gluon", None)  # as if Triton had no Gluon
    monkeypatch.delattr(kernel.triton, "gemv_gluon", raising=False)
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_IMPL.*needs a Triton with Gluon"):
        gemv_mod.gemv(torch.randn(1, 64), torch.randn(8, 64), config=(4, 64, 1))


def test_a_compile_trace_keeps_the_triton_kernel(monkeypatch):
    """Inductor traces Triton kernels, not Gluon ones: while torch.compile traces gemv, the Gluon kernel is not asked
    (the PDL op, opaque to compile, is where it runs)."""
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "gluon")
    monkeypatch.setattr(gg, "supports", lambda *a: pytest.fail("the Gluon kernel was asked inside a trace"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x, w = torch.randn(1, 64).to(DEVICE), torch.randn(8, 64).to(DEVICE)
    torch.testing.assert_close(gemv_mod.gemv(x, w, config=(4, 64, 1)), x @ w.T, rtol=1e-4, atol=1e-4)


def test_off_a_gpu_the_triton_kernel_keeps_every_call(monkeypatch):
    x = torch.randn(1, 256).to(DEVICE, torch.bfloat16)
    w = torch.randint(-127, 128, (32, 256), dtype=torch.int8).to(DEVICE)
    s = torch.rand(32).to(DEVICE) / 127
    if DEVICE == "cpu":
        assert not gg.supports(x, w, 2, False, 128)
    assert not gg.supports(x, w, 1, False, 128)  # int8 weights on the Triton-op form
    assert not gg.supports(x, w, 2, True, 128)  # a persistent grid
    assert not gg.supports(x, w.float(), 0, False, 128)  # float weights of another dtype than x
    monkeypatch.delenv(gemv_mod.IMPL_ENV, raising=False)
    want = gemv_mod.gemv(x, w, s, config=(4, 128, 2), rms_eps=1e-5)
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "gluon")
    got = gemv_mod.gemv(x, w, s, config=(4, 128, 2), rms_eps=1e-5)
    if DEVICE == "cpu":
        assert torch.equal(got, want)


_AOT = """
import re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource
from kernel.triton import gemv as gm, gemv_gluon as gg
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i in range(9)}  # 16-byte aligned pointers and sizes, as launched
target = GPUTarget("cuda", 90, 32)
for kind, (rows, block_k, warps), flags in CASES:
    int8 = kind == "int8"
    sig = dict(zip(names, ["*bf16", "*i8" if int8 else "*bf16"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
    # the Triton kernel's weight block layout, as Triton chose it
    consts = dict(flags, ROWS=rows, BLOCK_K=block_k, PDL=1, I8_MAGIC=False, PERSISTENT=False, I8_F16=2 * int8,
                  LATE=False, WVEC=0, HOIST=0, ATT=0)
    src = ASTSource(fn=gm._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")}, constexprs=consts,
                    attrs=attrs)
    ttgir = triton.compile(src, target=target, options={"num_warps": warps}).asm["ttgir"]
    two_d = [m for m in re.findall(r"#ttg.blocked<\\{(.*?)\\}>", ttgir) if "order = [1, 0]" in m]
    sys.stdout.write(f"triton {kind} {rows} {block_k} {warps}\\n{two_d[0]}\\n=====\\n")
    for x_smem in (True, False):
        for pdl in (1, 2):
            vec, tk, wr, wk = gg.layout(block_k, warps, int8)
            consts = dict(flags, ROWS=rows, BLOCK_K=block_k, PDL=pdl, I8=int8, VEC=vec, TK=tk, WR=wr, WK=wk,
                          K_P2=triton.next_power_of_2(4 * block_k), S_P2=4, X_SMEM=x_smem)
            gsig = {n: sig[n] for n in names[:10]}  # the Gluon kernel has no unified-attention arguments
            src = GluonASTSource(fn=gg._gemv_gluon, signature={**gsig, **dict.fromkeys(consts, "constexpr")},
                                 constexprs=consts, attrs=attrs)
            ptx = triton.compile(src, target=target, options={"num_warps": warps, "launch_pdl": True}).asm["ptx"]
            sys.stdout.write(f"gluon {kind} {rows} {block_k} {warps} {x_smem} {pdl}\\n" + ptx + "\\n=====\\n")
"""
# the H200 table's tiles (kernel/triton/gemv_tiles.json) and its calls' epilogues
CASES = [("int8", (32, 512, 4), dict(HAS_SCALE=True, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=True)),
         ("int8", (4, 2048, 4), dict(HAS_SCALE=True, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=False)),
         ("int8", (4, 2048, 8), dict(HAS_SCALE=True, HAS_BIAS=False, RMS=False, HAS_RES=True, GLU=False)),
         ("bf16", (8, 256, 2), dict(HAS_SCALE=False, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=True)),
         ("bf16", (4, 1024, 4), dict(HAS_SCALE=False, HAS_BIAS=True, RMS=False, HAS_RES=True, GLU=False))]


@pytest.fixture(scope="module")
def sm90_code():
    """{head: code} of the Triton kernel's layouts and the Gluon kernel's PTX, compiled offline for sm90 (in a
    process of its own: no interpreter)."""
    code = compile_offline(f"CASES = {CASES!r}\n" + _AOT, timeout=600)
    return dict(block.split("\n", 1) for block in code.split("\n=====\n")[:-1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def test_the_weight_block_is_laid_out_as_triton_lays_out_the_triton_kernels(sm90_code, case):
    """Each thread holds a 16-byte vector of a row's columns; threads and warps go along K as in the Triton
    kernel's block (as far as BLOCK_K goes), then along the rows, so a thread holds several rows of the same columns
    and one x value serves them all."""
    kind, (rows, block_k, warps), flags = case
    vec, tk, wr, wk = gg.layout(block_k, warps, kind == "int8")
    want = f"sizePerThread = [1, {vec}], threadsPerWarp = [{32 // tk}, {tk}], warpsPerCTA = [{wr}, {wk}]"
    assert sm90_code[f"triton {kind} {rows} {block_k} {warps}"].startswith(want)


def _loop(ptx: str) -> list[str]:
    """The lines of the PTX's K loop: from the label a backward branch jumps to, to that branch."""
    lines = ptx.splitlines()
    for n, line in enumerate(lines):
        jump = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if jump:
            start = next((i for i in range(n) if lines[i].startswith(jump.group(1) + ":")), None)
            if start is not None:
                return lines[start:n + 1]
    return []


@pytest.mark.parametrize("x_smem", [True, False], ids=["x-smem", "x-global"])
@pytest.mark.parametrize("pdl", ["1", "2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def test_sm90_code_has_no_barrier_in_its_k_loop_and_waits_after_its_first_weights(sm90_code, case, pdl, x_smem):
    """Compiled offline for sm90: the K loop loads weights (and x from shared memory, staged once before the loop,
    or from global memory) with no CTA barrier; the first weight loads precede the PDL wait; the next kernel is let
    launch after the wait with PDL 1 and before it with 2."""
    kind, (rows, block_k, warps), _ = case
    ptx = sm90_code[f"gluon {kind} {rows} {block_k} {warps} {x_smem} {pdl}"]
    lines = ptx.splitlines()
    at = {op: [n for n, line in enumerate(lines) if op in line]
          for op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents", "ld.global.v4")}
    assert len(at["griddepcontrol.wait"]) == 1 and len(at["griddepcontrol.launch_dependents"]) == 1
    wait, trigger = at["griddepcontrol.wait"][0], at["griddepcontrol.launch_dependents"][0]
    assert (trigger < wait) == (pdl == "2")
    assert at["ld.global.v4"][0] < wait  # a first weight vector before the wait
    loop = "\n".join(_loop(ptx))
    assert "ld.global.v4" in loop and "bar.sync" not in loop
    assert ("ld.shared" in loop) == x_smem


@pytest.mark.skipif(DEVICE != "cuda" or not torch.cuda.is_available()
                    or torch.cuda.get_device_capability()[0] < 9, reason="Gluon runs on sm90+ GPUs only")
@pytest.mark.parametrize("dtype, int8", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, False),
                                         (torch.float32, False)])
@pytest.mark.parametrize("call", ["plain", "bias", "rms+residual", "glu", "glu+rms", "pdl", "pdl x-smem",
                                  "glu+rms x-smem", "pdl x-global", "glu+rms x-global"])
@pytest.mark.parametrize("N, K, config", [(70, 520, (4, 256, 2)), (48, 2048, (8, 1024, 4)), (64, 1030, (2, 128, 1))])
def test_gluon_gives_the_references_and_the_triton_kernels_results(monkeypatch, dtype, int8, call, N, K, config):
    x, w, s, b, r = _inputs(dtype, N, K, N + K, int8=int8)
    call, _, x_from = call.partition(" x-")  # the K loop's x as the dtype's default has it, or set
    monkeypatch.setenv(gg.X_ENV, x_from or "auto")
    kw = {"bias": dict(bias=b), "rms+residual": dict(rms_eps=1e-5, residual=r), "glu": dict(glu=True),
          "glu+rms": dict(glu=True, rms_eps=1e-5), "pdl": dict(rms_eps=1e-5, residual=r, pdl=True)}.get(call, {})
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "gluon")
    assert gg.supports(x, w, gemv_mod._i8_f16(w, config[0] * config[1] // (32 * config[2]), x.dtype), False,
                       config[1])
    got = gemv_mod.gemv(x, w, s, config=config, **kw)
    monkeypatch.setenv(gemv_mod.IMPL_ENV, "triton")
    triton_out = gemv_mod.gemv(x, w, s, config=config, **kw)
    assert got.shape == triton_out.shape and got.dtype == triton_out.dtype
    ref_kw = {k: v for k, v in kw.items() if k not in ("glu", "pdl")} | ({"glu": "silu"} if kw.get("glu") else {})
    f32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in ref_kw.items()}
    if int8:
        want32 = ref.int8_linear(x.float(), w, s.float(), **f32)
        lowp = ref.int8_linear(x, w, s, **ref_kw)
    else:
        want32 = ref.linear(x.float(), w.float(), **f32)
        lowp = ref.linear(x, w, **ref_kw)
    check("gemv gluon", got, want32, lowp, dtype, fp32_atol=2e-4)
    # and within a few units of the Triton kernel's last place (fp32: its sums' order, as the reference allows)
    tol = 2e-4 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps * want32.abs().max().item() + 1e-6
    assert (got.float() - triton_out.float()).abs().max().item() <= tol
