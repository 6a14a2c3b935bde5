"""The persistent decode-layer kernel (kernel.triton.decode_layer) against the torch reference of the layer it
fuses, under Triton's interpreter (its five stages as five launches, see the module docstring), and its grid
barrier in the code compiled offline for sm90."""

from __future__ import annotations

import re

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError, ShapeError

pytest.importorskip("triton")

from triton_testing import DEVICE, check, compile_offline


def _layer(dtype, *, D=64, H=4, KVH=2, Dh=16, F=88, L=200, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)

    ang = torch.randn(Dh // 2, generator=g)
    return dict(x=r(1, 1, D), w_qkv=r(H * Dh + 2 * KVH * Dh, D, scale=D ** -0.5), w_o=r(D, H * Dh, scale=0.2),
                w_gate_up=r(2 * F, D, scale=D ** -0.5), w_down=r(D, F, scale=F ** -0.5), k_cache=r(1, KVH, L, Dh),
                v_cache=r(1, KVH, L, Dh), cos=torch.cat([ang.cos(), ang.cos()]).to(DEVICE, dtype),
                sin=torch.cat([ang.sin(), ang.sin()]).to(DEVICE, dtype)), H


def _run(fn, t, n, H, **kw):
    t = {k: (v.clone() if k.endswith("cache") else v) for k, v in t.items()}
    lens = torch.tensor([n], device=DEVICE)
    out = fn(t["x"], t["w_qkv"], t["w_o"], t["w_gate_up"], t["w_down"], t["k_cache"], t["v_cache"], lens, t["cos"],
             t["sin"], n_heads=H, eps_attn=1e-5, eps_mlp=1e-6, **kw)
    return out, t["k_cache"], t["v_cache"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 64, 65, 137, 200])  # one slot, a whole split, one past it, ragged, the capacity
def test_decode_layer_matches_the_reference_layer(dtype, n):
    from kernel.triton.decode_layer import decode_layer

    t, H = _layer(dtype)
    counters = ref.decode_layer_counters(2, DEVICE)
    got, k_got, v_got = _run(decode_layer, t, n, H, counters=counters)
    lowp, _, _ = _run(ref.decode_layer, t, n, H)
    f32 = {k: v.float() for k, v in t.items()}
    ref32, k_ref, v_ref = _run(ref.decode_layer, f32, n, H)
    assert got.shape == t["x"].shape and got.dtype == dtype
    check(f"decode_layer n={n}", got, ref32, lowp, dtype)
    # the new token's key (rotated) and value went to slot n - 1 and nowhere else
    for name, buf, want in (("k", k_got, k_ref), ("v", v_got, v_ref)):
        touched = (buf.float() != t[f"{name}_cache"].float()).any(-1)[0]  # (KVH, L)
        assert not touched[:, :n - 1].any() and not touched[:, n:].any(), name
        check(f"cache {name}", buf[0, :, n - 1], want[0, :, n - 1], buf[0, :, n - 1], dtype)
    assert not counters.any(), "the kernel leaves its counters zeroed for the next call"


@pytest.mark.parametrize("flags", ["interleave", "poll_one,staged"])
def test_decode_layer_launch_options_compute_the_same_layer(flags, monkeypatch):
    from kernel.triton import decode_layer as dl

    monkeypatch.setenv(dl.OPTIONS_ENV, flags)
    assert dl.options()["interleave"] == ("interleave" in flags)
    t, H = _layer(torch.float32)
    got, _, _ = _run(dl.decode_layer, t, 137, H, counters=ref.decode_layer_counters(2, DEVICE))
    want, _, _ = _run(ref.decode_layer, t, 137, H)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(dl.OPTIONS_ENV, "interleave,fast")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['fast'\]; valid: poll_one, interleave, staged"):
        dl.options()


def test_decode_layer_refuses_what_it_cannot_run():
    from kernel.triton.decode_layer import decode_layer

    t, H = _layer(torch.float32)
    lens = torch.tensor([5], device=DEVICE)
    args = [t[k] for k in ("x", "w_qkv", "w_o", "w_gate_up", "w_down", "k_cache", "v_cache")] + [lens, t["cos"],
                                                                                               t["sin"]]
    kw = dict(n_heads=H, eps_attn=1e-5, eps_mlp=1e-5)
    with pytest.raises(ShapeError, match="needs its counters workspace"):
        decode_layer(*args, **kw)
    counters = ref.decode_layer_counters(2, DEVICE)
    bad = list(args)
    bad[1] = t["w_qkv"][:-1]
    with pytest.raises(ShapeError, match=r"w_qkv should be \(128, 64\)"):
        decode_layer(*bad, counters, **kw)
    bad = list(args)
    bad[0] = t["x"].expand(2, 1, 64)
    with pytest.raises(ShapeError, match="one token of one row"):
        decode_layer(*bad, counters, **kw)
    with pytest.raises(ShapeError, match="n_heads=3 must be a positive multiple"):
        decode_layer(*args, counters, **{**kw, "n_heads": 3})
    with pytest.raises(ShapeError, match="at least 4 entries"):
        decode_layer(*args, counters[:3], **kw)
    bad = list(args)
    bad[5] = t["k_cache"].double()
    with pytest.raises(ShapeError, match=r"k_cache must be a torch.float32 buffer \(x's dtype\)"):
        decode_layer(*bad, counters, **kw)


def test_the_op_declares_only_the_caches_and_counters_written():
    """torch.compile sees an opaque op: its schema must name every buffer the kernel writes (else compiled code
    could reorder a read of the cache past the write) and nothing else (else functionalisation copies weights)."""
    import kernel.triton.decode_layer  # noqa: F401  (registers the op)

    schema = torch.ops.lmstack.decode_layer.default._schema
    written = sorted(a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write)
    assert written == ["counters", "k_cache", "v_cache"]


_AOT = """
import inspect, sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import decode_layer as dl
params = list(inspect.signature(dl._layer.fn).parameters)
consts = dict(FIRST=0, LAST=4, SYNC=True, POLL_ONE=sys.argv[1] == "1", INTERLEAVE=False, TIMING=False, UPCAST=False,
              DOT=0, BLOCK_D=2048, BK_QKV=512, ST_QKV=4, BK_O=512, ST_O=4, BK_GU=128, ST_GU=4, BK_D=512, ST_D=4,
              R_QKV=32, R_O=16, R_GU=64, R_D=16, BLOCK_G=16, BLOCK_DH=64, BLOCK_N=8, BLOCK_S=64)
f32 = {"pm_ptr", "pl_ptr", "pacc_ptr"}
kinds = {"lens_ptr": "*i64", "cnt_ptr": "*i32", "times_ptr": "*i64", "eps1": "fp32", "eps2": "fp32", "scale": "fp32"}
sig = {p: "constexpr" if p in consts else kinds.get(p, "*fp32" if p in f32 else "*bf16" if p.endswith("_ptr")
                                                     else "i32") for p in params}
# the divisibility a real launch specialises on (16-byte aligned pointers, sizes and strides)
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params)
         if sig[p] not in ("constexpr", "fp32") and p not in ("H", "KVH", "NS", "lens_ptr", "cnt_ptr", "times_ptr")}
src = triton.compiler.ASTSource(fn=dl._layer, signature=sig, constexprs=consts, attrs=attrs)
kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
sys.stdout.write(kern.asm["ptx"])
"""


@pytest.mark.parametrize("poll_one", [False, True])
def test_grid_barrier_publishes_each_stage_before_the_next_reads_it(poll_one):
    """Offline for sm90 (the interpreter launches the stages one by one and never runs a barrier): each of the
    four barriers is a CTA barrier, a release count, a spin on the count that does not stop in L1 (volatile loads
    by every thread, or acquire loads by one), an acquire, and a CTA barrier; the weights stream through
    asynchronous copies (the pipelined matmul loops)."""
    lines = compile_offline(_AOT, "1" if poll_one else "0", timeout=600).splitlines()
    # (qualifier order differs between Triton versions: red.global.gpu.release.add / red.release.gpu.global.add)
    release = [i for i, line in enumerate(lines) if re.search(r"\b(red|atom)\.\S*release\S*\.add", line)]
    # (the acquire add of zero may compile to an acquire load, or a load and an acquire fence)
    acquire = [i for i, line in enumerate(lines)
               if re.search(r"\b(atom|ld)\.\S*acquire|\bfence\.(acq_rel|acquire|sc)", line)]
    # one count per barrier, each followed by an acquire (with poll_one the spin's polls are the acquires)
    assert len(release) == 4 and len(acquire) >= 4, (len(release), len(acquire))
    acquire = [next(a for a in acquire if a > rel) for rel in release]
    if poll_one:
        assert not any("ld.volatile.global" in line for line in lines)
    for rel, acq in zip(release, acquire):
        assert rel < acq
        assert any("bar.sync" in line for line in lines[rel - 10:rel]), "the stage's stores, then the count"
        if not poll_one:
            assert any("ld.volatile.global" in line for line in lines[rel:acq]), "the spin reads L2, not L1"
        assert any("bar.sync" in line for line in lines[acq:acq + 12]), "then the whole CTA goes on"
    assert sum("cp.async.cg.shared.global" in line for line in lines) >= 8, "weights through cp.async"
