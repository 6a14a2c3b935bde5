"""The skinny matmul's programmatic-dependent-launch twin: same results, an op torch.compile keeps opaque, chosen
only by name, and (compiled offline for sm90, no GPU needed) the wait, the trigger and the L2 prefetch in the code
with the weight pipeline intact."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from kernel import default_registry
from kernel import reference as ref

triton = pytest.importorskip("triton")

from triton_testing import compile_offline  # noqa: E402

from kernel.triton import skinny  # noqa: E402  (needs triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on an sm90+ GPU the twins really launch with PDL


def test_pdl_twins_match_the_plain_kernels_and_pass_opcheck():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(3, 200, generator=g).to(DEVICE), torch.randn(70, 200, generator=g).to(DEVICE),
               torch.randn(70, generator=g).to(DEVICE))
    r = torch.randn(3, 70, generator=g).to(DEVICE)
    assert torch.equal(skinny.linear_pdl(x, w, b, residual=r), skinny.linear(x, w, b, residual=r))
    assert torch.equal(skinny.linear_pdl(x, w, rms_eps=1e-5), skinny.linear(x, w, rms_eps=1e-5))
    wq = torch.randint(-127, 128, (70, 200), generator=g, dtype=torch.int8).to(DEVICE)
    s = (torch.rand(70, generator=g) / 127).to(DEVICE)
    assert torch.equal(skinny.int8_linear_pdl(x, wq, s, b), skinny.int8_linear(x, wq, s, b))
    torch.testing.assert_close(skinny.int8_linear_pdl(x, wq, s, b), ref.int8_linear(x, wq, s, b), rtol=1e-5,
                               atol=1e-4)
    torch.library.opcheck(torch.ops.lmstack.skinny_pdl.default, (x, w, None, b, None, r))
    torch.library.opcheck(torch.ops.lmstack.skinny_pdl.default, (x, wq, s, None, None, None))


def test_pdl_twin_is_one_opaque_op_under_torch_compile():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 1, 64, generator=g).to(DEVICE), torch.randn(48, 64, generator=g).to(DEVICE)
    seen = []

    def backend(gm, inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(lambda t: skinny.linear_pdl(t, w), backend=backend, fullgraph=True)(x)
    assert any("lmstack.skinny_pdl" in t for t in seen) and not any("triton" in t.lower() for t in seen), seen
    torch.testing.assert_close(got, skinny.linear(x, w))


def test_pdl_twin_returns_split_k_partials_and_leaves_their_sum_to_the_graph():
    """When K is split the opaque op ends at the kernel: it returns the (SPLIT_K, M, N) fp32 partial sums (its fake
    says the same shape, checked by opcheck), and the sum, bias, residual and cast are ordinary ops that
    torch.compile sees (inductor fuses them with what follows and launches them with PDL)."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 512, generator=g).to(DEVICE), torch.randn(24, 512, generator=g).to(DEVICE)
    b, r = torch.randn(24, generator=g).to(DEVICE), torch.randn(2, 24, generator=g).to(DEVICE)
    split = skinny.skinny_plan(x, w)[2]
    if split == 1:
        pytest.skip("this card's tiles do not split K for a 24 x 512 weight")
    parts = torch.ops.lmstack.skinny_pdl(x, w, None, b, None, r)
    assert parts.shape == (split, 2, 24) and parts.dtype == torch.float32
    assert torch.equal(skinny.finish_partials(parts, None, b, r, x.dtype), skinny.linear(x, w, b, residual=r))
    assert torch.equal(skinny.linear_pdl(x, w, b, residual=r), skinny.linear(x, w, b, residual=r))
    wq = torch.randint(-127, 128, (24, 512), generator=g, dtype=torch.int8).to(DEVICE)
    s = (torch.rand(24, generator=g) / 127).to(DEVICE)
    assert torch.equal(skinny.int8_linear_pdl(x, wq, s, b), skinny.int8_linear(x, wq, s, b))
    torch.library.opcheck(torch.ops.lmstack.skinny_pdl.default, (x, w, None, b, None, r))
    torch.library.opcheck(torch.ops.lmstack.skinny_pdl.default, (x, wq, s, b, None, None))
    seen = []

    def backend(gm, inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method"))
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(lambda t: skinny.linear_pdl(t, w, b, residual=r), backend=backend, fullgraph=True)(x)
    assert any("lmstack.skinny_pdl" in t for t in seen) and "sum" in seen, seen
    assert torch.equal(got, skinny.linear(x, w, b, residual=r))


def test_pdl_twins_are_never_auto_and_need_sm90():
    reg = default_registry()
    for op in ("linear", "int8_linear"):
        h100, a100 = {"device": "cuda", "dtype": torch.bfloat16, "capability": (9, 0)}, {"capability": (8, 0)}
        assert reg.select(op, "auto", **h100).name == "triton_skinny"
        assert reg.why_not(op, "triton_skinny_pdl", **h100) is None
        assert "9.0" in reg.why_not(op, "triton_skinny_pdl", **{**h100, **a100})
        assert reg.why_not(op, "triton_skinny_pdl", device="cpu", dtype=torch.bfloat16) is not None


_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import skinny
weight = sys.argv[1]
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "ws_ptr", "ss_ptr", "cnt_ptr", "M", "N", "K",
         "K_PER_SPLIT", "SPLIT", "stride_xm", "stride_wn", "stride_os", "stride_om", "stride_rm", "rms_eps"]
types = (["*bf16", "*i8" if weight == "int8" else "*bf16", "*bf16", "*bf16", "*bf16", "*bf16", "*fp32", "*fp32", "*i32"]
         + ["i32"] * 10 + ["fp32"])
sig = dict(zip(names, types))
# the divisibility a real launch specialises on (16-byte aligned pointers, sizes and strides)
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
         if n not in ("M", "SPLIT", "stride_os", "rms_eps")}
# plain, PDL with and without the prefetch, a folded RMSNorm, and a K split in 2 summed by its last split (SERIAL)
for pdl, prefetch, rms, serial in ((False, False, False, False), (True, True, False, False),
                                   (True, False, False, False), (False, False, True, False),
                                   (False, False, True, True)):
    consts = dict(UPCAST=False, FINAL=not serial, SERIAL=serial, HAS_SCALE=weight == "int8", HAS_BIAS=False,
                  RMS=rms, HAS_RES=True, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, NUM_STAGES=5, PDL=pdl,
                  PREFETCH=prefetch, W_LINE=128 if weight == "int8" else 64, RMS_ROWS=1,
                  RMS_K=1024 if serial else 2048, SPLIT_P2=2 if serial else 1)
    src = triton.compiler.ASTSource(fn=skinny._skinny, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": pdl})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


@functools.cache
def _ptx(weight: str) -> tuple[str, str, str, str, str]:
    """The skinny kernel's PTX for an sm90 card, compiled offline (no GPU) in a process without Triton's
    interpreter: plain, PDL with the L2 prefetch, PDL without it, with a folded RMSNorm (``rms_eps``), and that
    with K split in two and summed by the last split (``split_counters``)."""
    plain, pdl, no_prefetch, rms, serial, _ = compile_offline(_AOT, weight).split("\n=====\n")
    return plain, pdl, no_prefetch, rms, serial


def _count(ptx: str, op: str) -> int:
    return len(re.findall(rf"^\s*(?:@%p\d+\s+)?{re.escape(op)}\b", ptx, flags=re.M))


@pytest.mark.parametrize("weight", ["bf16", "int8"])
def test_pdl_kernel_waits_triggers_and_prefetches_with_the_pipeline_intact(weight):
    plain, pdl, no_prefetch, rms, _ = _ptx(weight)
    for op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents", "prefetch.global.L2"):
        assert _count(plain, op) == 0 and _count(pdl, op) >= 1, op
    # the weight tiles still stream through the asynchronous shared-memory pipeline, as many copies as without PDL
    assert _count(pdl, "cp.async.cg.shared.global") == _count(plain, "cp.async.cg.shared.global") > 0
    # the wait comes before the first read of x (and after the prefetches)
    lines = pdl.splitlines()
    first = {op: next(i for i, line in enumerate(lines) if op in line)
             for op in ("prefetch.global.L2", "griddepcontrol.wait", "cp.async.cg.shared.global")}
    assert first["prefetch.global.L2"] < first["griddepcontrol.wait"] < first["cp.async.cg.shared.global"]
    assert _count(no_prefetch, "prefetch.global.L2") == 0 and _count(no_prefetch, "griddepcontrol.wait") == 1
    # a folded RMSNorm leaves the weight loop alone (its x block is loaded before the loop, reduced after it): the
    # same asynchronous copies as the plain kernel and a loop body of the same length (summing the squares inside
    # the loop, as kernel 0.4 did, made it about 110 instructions longer)
    assert _count(rms, "cp.async.cg.shared.global") == _count(plain, "cp.async.cg.shared.global")
    assert abs(_loop_body_lines(rms) - _loop_body_lines(plain)) <= 4, (_loop_body_lines(rms), _loop_body_lines(plain))


@pytest.mark.parametrize("weight", ["bf16", "int8"])
def test_serial_split_k_counts_after_a_barrier_with_the_pipeline_intact(weight):
    """A split K summed by the last split (``split_counters``): each program's partial stores, a CTA barrier, then
    one acquire-release count at GPU scope (CUTLASS's split-K semaphore pattern); the last program reads the
    partials from L2 (``.cg``) and sets the counter back to zero; the weight loop is the folded kernel's."""
    _, _, _, rms, serial = _ptx(weight)
    assert "atom." not in rms
    lines = serial.splitlines()
    count = [i for i, line in enumerate(lines) if re.search(r"atom\.global\.gpu\.acq_rel\.add", line)]
    assert len(count) == 1
    stores = [i for i, line in enumerate(lines[:count[0]]) if "st.global" in line]
    assert stores and any("bar.sync" in line for line in lines[stores[-1]:count[0]])
    assert sum("ld.global.cg" in line for line in lines[count[0]:]) >= 2
    assert re.search(r"atom\.global\.gpu\.\w+\.exch", serial)
    assert _count(serial, "cp.async.cg.shared.global") == _count(rms, "cp.async.cg.shared.global")
    assert abs(_loop_body_lines(serial) - _loop_body_lines(rms)) <= 4, (_loop_body_lines(serial), _loop_body_lines(rms))


def _loop_body_lines(ptx: str) -> int:
    """Lines of the largest basic block that issues weight copies: the K loop's body."""
    blocks = re.findall(r"^\$L__BB0_\d+:.*?(?=^\$L__BB0_\d+:)", ptx, flags=re.M | re.S)
    return max(b.count("\n") for b in blocks if "cp.async.cg.shared.global" in b)


def test_prefetch_size_comes_from_the_environment_and_bad_values_are_named(monkeypatch):
    from specs.errors import ConfigError

    monkeypatch.delenv(skinny.PREFETCH_ENV, raising=False)
    assert skinny.pdl_prefetch_bytes() == skinny.PDL_PREFETCH_BYTES == 24 << 20
    monkeypatch.setenv(skinny.PREFETCH_ENV, "0")
    assert skinny.pdl_prefetch_bytes() == 0
    for bad in ("-1", "lots"):
        monkeypatch.setenv(skinny.PREFETCH_ENV, bad)
        with pytest.raises(ConfigError, match="LMSTACK_PDL_PREFETCH_BYTES.*byte count >= 0"):
            skinny.pdl_prefetch_bytes()
