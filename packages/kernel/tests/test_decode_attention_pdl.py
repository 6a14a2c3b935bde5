"""decode_attention launched with programmatic dependent launch (``triton_pdl``): the plain kernels' results and
cache writes, an opaque op that declares the caches it writes (and that compiled code calls on the caches
themselves, no copies), chosen only by name, and (compiled offline for sm90) each kernel waits for the one before
before it reads anything, then lets the next one start."""

from __future__ import annotations

import re

import pytest
import torch

from kernel import default_registry

triton = pytest.importorskip("triton")

from triton_testing import compile_offline  # noqa: E402

from kernel.triton import decode_attention as da  # noqa: E402  (needs triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on an sm90+ GPU the op really launches with PDL


def _step(B=2, H=8, KVH=2, L=96, Dh=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)
    lens = torch.tensor([37, 90][:B], device=DEVICE)
    return (r(B, H, Dh), r(B, KVH, L, Dh), r(B, KVH, L, Dh), lens), dict(k_new=r(B, KVH, Dh), v_new=r(B, KVH, Dh),
                                                                           cos_BDh=r(B, Dh), sin_BDh=r(B, Dh))


@pytest.mark.parametrize("new", [True, False, "tables"])
def test_pdl_op_gives_the_plain_kernels_results_and_cache_writes(new):
    (q, k, v, lens), kw = _step()
    if new == "tables":  # the angles by position (P = 96 slots), read at each row's new slot
        g = torch.Generator().manual_seed(1)
        kw = {**kw, "cos_BDh": None, "sin_BDh": None, "cos_PDh": torch.randn(96, 32, generator=g).to(DEVICE),
              "sin_PDh": torch.randn(96, 32, generator=g).to(DEVICE)}
    kw = kw if new else {}
    k2, v2 = k.clone(), v.clone()
    want = da.decode_attention(q, k, v, lens, **kw)
    got = da.decode_attention_pdl(q, k2, v2, lens, **kw)
    assert torch.equal(got, want) and torch.equal(k2, k) and torch.equal(v2, v)
    assert da.num_splits(2, 2, 96, da.device_info(q)[0]) > 1  # the split kernel and the combine kernel both ran


def test_pdl_op_combines_in_the_split_kernel_given_counters():
    (q, k, v, lens), kw = _step()
    counters = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    k2, v2 = k.clone(), v.clone()
    want = da.decode_attention(q, k, v, lens, **kw)
    got = da.decode_attention_pdl(q, k2, v2, lens, split_counters=counters, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the splits summed in another order's kernel
    assert torch.equal(k2, k) and torch.equal(v2, v) and not counters.any()  # left zeroed for the next call


@pytest.mark.parametrize("angles", ["rows", "tables"])
@pytest.mark.parametrize("long_first", [False, True])
def test_the_early_block_gives_the_plain_results_over_stale_slots(monkeypatch, long_first, angles):
    """Under PDL the split kernel loads a block of cached keys and values before it knows the row's length (the
    block its chunk starts at when chunks are one block long), and loads it again where the chunk starts elsewhere.
    That path, taken here without PDL (the interpreter has none): a row of one-block chunks and a row of longer
    ones (sized from the split count, which depends on the device's SM count), over caches whose slots past each
    row's length hold NaN, give the plain path's output and cache writes, with the angles given per row or as
    (P, Dh) tables read at each row's new slot."""
    B, H, KVH, L, Dh = 2, 8, 2, 2400, 32
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)
    q, k, v = r(B, H, Dh), r(B, KVH, L, Dh), r(B, KVH, L, Dh)
    ns = da.num_splits(B, KVH, L, da.device_info(q)[0])
    lens = [37, ns * da.block_s(L, ns) + 150][::-1 if long_first else 1]
    for b, n in enumerate(lens):  # stale slots: the new token's slot n - 1 and everything past it
        k[b, :, n - 1:] = float("nan")
        v[b, :, n - 1:] = float("nan")
    kw = dict(k_new=r(B, KVH, Dh), v_new=r(B, KVH, Dh), cos_BDh=r(B, Dh), sin_BDh=r(B, Dh))
    if angles == "tables":  # random angles by slot, each row's read at its own new slot
        kw = {**kw, "cos_BDh": None, "sin_BDh": None, "cos_PDh": r(L, Dh), "sin_PDh": r(L, Dh)}
    lens_B = torch.tensor(lens, device=DEVICE)
    cdiv = lambda a, b: (a + b - 1) // b
    block = da.block_s(L, ns)
    chunks = [cdiv(cdiv(n, ns), block) * block for n in lens]  # the kernel's chunk of each row
    assert ns > 1 and max(lens) < L and min(chunks) == block < max(chunks)  # both kinds of chunk
    k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
    want = da.decode_attention(q, k1, v1, lens_B, **kw)
    monkeypatch.setattr(da, "EARLY_WITHOUT_PDL", True)
    got = da.decode_attention(q, k2, v2, lens_B, **kw)
    assert torch.isfinite(want).all() and torch.equal(got, want)
    assert torch.equal(k2.nan_to_num(7.0), k1.nan_to_num(7.0)) and torch.equal(v2.nan_to_num(7.0), v1.nan_to_num(7.0))


def test_pdl_op_declares_the_caches_it_writes_and_passes_opcheck():
    schema = torch.ops.lmstack.decode_attention_pdl.default._schema
    written = sorted(a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write)
    assert written == ["k", "split_counters", "v"]
    (q, k, v, lens), kw = _step()
    torch.library.opcheck(torch.ops.lmstack.decode_attention_pdl,
                          (q, k, v, lens, None, None, None, kw["k_new"], kw["v_new"], kw["cos_BDh"], kw["sin_BDh"],
                           None, None, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_compiled_code_calls_the_op_on_the_caches_without_copying_them():
    from torch._inductor.utils import run_and_get_code

    (q, k, v, lens), kw = _step(B=1)
    want_k, want_v = k.clone(), v.clone()
    want = da.decode_attention(q * 2, want_k, want_v, lens, **kw) + 1

    def step(q, k, v, lens):
        return da.decode_attention_pdl(q * 2, k, v, lens, **kw) + 1

    torch._dynamo.reset()
    got, codes = run_and_get_code(torch.compile(step, fullgraph=True), q, k, v, lens)
    code = "\n".join(codes)
    assert "decode_attention_pdl" in code and ".copy_(" not in code and "clone" not in code
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)  # the step's token reached the caches in place


def test_pdl_attention_is_chosen_only_by_name():
    reg = default_registry()
    h100 = dict(device="cuda", dtype=torch.bfloat16, capability=(9, 0), head_dim=64)
    assert reg.select("decode_attention", "auto", **h100).name == "triton"
    assert reg.why_not("decode_attention", "triton_pdl", **h100) is None
    assert "9.0" in reg.why_not("decode_attention", "triton_pdl", **{**h100, "capability": (8, 0)})


_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import decode_attention as da
from triton_testing import DECODE_ARG_NAMES as names, DECODE_ARG_TYPES as types
for pdl, new in ((False, True), (True, True), (True, False)):
    consts = dict(PAGED=False, PAGE=1, DOT=1, SPLIT=True, NEW=new, ROPE=new, COMBINE=False, BLOCK_G=16,
                  BLOCK_S=64, BLOCK_D=64, BLOCK_N=8, PDL=pdl, EARLY=pdl and new, ROPE_AT_POS=False, UNIFIED=False)
    src = triton.compiler.ASTSource(fn=da._decode, signature={**dict(zip(names, types)),
                                                              **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
    sys.stdout.write(triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": 4, "launch_pdl": pdl}).asm["ptx"] + "\\n=====\\n")
    if not new:
        continue
    cnames = ["acc_ptr", "m_ptr", "l_ptr", "o_ptr", "stride_ob", "stride_oh", "H", "NS", "Dh"]
    consts = dict(BLOCK_N=8, BLOCK_D=64, PDL=pdl)
    src = triton.compiler.ASTSource(fn=da._combine, signature={**dict(zip(cnames, ["*fp32"] * 3 + ["*bf16"]
                                                                          + ["i32"] * 5)),
                                                               **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
    sys.stdout.write(triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": 4, "launch_pdl": pdl}).asm["ptx"] + "\\n=====\\n")
"""


def test_pdl_kernels_wait_before_what_the_kernel_before_wrote_then_trigger():
    plain_dec, plain_comb, pdl_dec, pdl_comb, pdl_old, _ = compile_offline(_AOT).split("\n=====\n")
    for ptx in (plain_dec, plain_comb):
        assert "griddepcontrol" not in ptx

    def order(ptx):
        lines = ptx.splitlines()
        at = lambda pat: next(i for i, line in enumerate(lines) if re.search(pat, line))
        loads = [i for i, line in enumerate(lines) if re.search(r"\bld\.global", line)]
        return at("griddepcontrol.wait"), at("griddepcontrol.launch_dependents"), loads, at(r"\bst\.global")

    # the combine, and the split kernel without the new token (the kernel before may have written the cache's last
    # slot): nothing is read before the wait
    for ptx in (pdl_comb, pdl_old):
        wait, launch, loads, store = order(ptx)
        assert wait < launch < loads[0] < store
    # with the new token: the first block of cached keys and values is loaded before the wait, and q, the new key
    # and value after it (there are loads on both sides), and nothing is stored before it
    wait, launch, loads, store = order(pdl_dec)
    assert loads[0] < wait < launch < loads[-1] and wait < store
    # after the wait, the length, q and the new key and value load together: all before the first branch (every
    # branch of the kernel depends on the length), not one round trip behind it (kernel 0.15: the length alone)
    lines = pdl_dec.splitlines()
    branch = next(i for i, line in enumerate(lines) if i > wait and re.search(r"\bbra\b", line))
    assert sum(wait < i < branch for i in loads) >= 4
