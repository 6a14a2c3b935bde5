"""The row-pair int8 gemv prototype (``benchmarks/bench_rowpair_gemv.py``): its weight layout, its values on small
shapes (under Triton's interpreter off a GPU), and, compiled offline for sm90, the K loop it exists for: 16-byte
weight loads with no shuffle of x through shared memory, where the shipped int8 gemv's loop has one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from triton_testing import DEVICE, compile_offline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
rowpair = pytest.importorskip("bench_rowpair_gemv")


def test_interleave_puts_two_rows_in_each_word():
    w = torch.arange(-60, 60, dtype=torch.int8).reshape(6, 20)
    w16 = rowpair.interleave(w)
    assert w16.dtype == torch.int16 and w16.shape == (3, 20)
    pairs = w16.view(torch.int8).reshape(3, 20, 2)  # little-endian: the low byte first
    assert torch.equal(pairs[..., 0], w[0::2]) and torch.equal(pairs[..., 1], w[1::2])
    glu = rowpair.interleave(w, glu=True).view(torch.int8).reshape(3, 20, 2)  # gate row i with up row i
    assert torch.equal(glu[..., 0], w[:3]) and torch.equal(glu[..., 1], w[3:])
    with pytest.raises(ValueError, match="int8 \\(N, K\\) weight with N even, got torch.int8 \\(5, 20\\)"):
        rowpair.interleave(w[:5])


def test_rowpair_gemv_gives_the_product_in_every_call_form():
    """Plain after an RMSNorm, with a residual, and the SwiGLU of a gate/up pair: within 2% of the fp32 reference's
    largest output (K of three steps, the last partial; a partial last block of row pairs)."""
    device = DEVICE
    assert rowpair.check(device) < 2e-2


def test_rowpair_gemv_matches_the_shipped_gemv():
    """The same int8 weights, scales, x and residual through the shipped gemv and the prototype: the same outputs
    within a few fp16 roundings (both sum fp16 products of x scaled by 2^-7, in different orders)."""
    from kernel.triton import gemv

    device = DEVICE
    g = torch.Generator().manual_seed(5)
    x, w, scale, extra, _ = rowpair.case("o", 40, 384, g, device, torch.float32)
    res = extra["residual"]
    want = gemv.gemv(x, w, scale, config=(4, 128, 2), residual=res)
    got = rowpair.rowpair_gemv(x, rowpair.interleave(w), scale, config=(2, 128, 2), residual=res)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())


_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
sys.path.insert(0, sys.argv[1])
import bench_rowpair_gemv as rp
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "res_ptr", "N", "K", "rms_eps"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps")}
sig = dict(zip(names, ["*bf16", "*i16", "*bf16", "*bf16", "*bf16", "i32", "i32", "fp32"]))
opts = {"num_warps": 8, "launch_pdl": True}
flag_sig = {"cnt_ptr": "*i32", "wait_slot": "i32", "wait_count": "i32", "sig_slot": "i32"}
for stages, flags in ((1, 0), (2, 0), (1, 1)):
    consts = dict(PAIRS=2, BLOCK_K=2048, PDL=True, ASM=True, RMS=False, HAS_RES=True, GLU=False, STAGES=stages,
                  FLAGS=flags, XCACHE=".cg" if flags else "")
    src = triton.compiler.ASTSource(fn=rp._rowpair,
                                    signature={**sig, **dict.fromkeys(consts, "constexpr"), **flag_sig},
                                    constexprs=consts, attrs=attrs)
    sys.stdout.write(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"] + "\\n=====\\n")
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps", "NS")}
sig = dict(zip(names, ["*bf16", "*i8"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"] + ["*fp32"] * 3 + ["i32"]))
consts = dict(HAS_SCALE=True, HAS_BIAS=False, RMS=False, HAS_RES=True, GLU=False, ROWS=4, BLOCK_K=2048, PDL=True,
              I8_MAGIC=False, PERSISTENT=False, I8_F16=2, LATE=False, WVEC=0, HOIST=0, ATT=0)
src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                constexprs=consts, attrs=attrs)
sys.stdout.write(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"])
"""


def _loop(ptx: str) -> list[str]:
    """The K loop's body: from the loop's label to its branch back."""
    lines = ptx.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\$L__BB0_\d+:\s*// %\.lr\.ph", line))
    label = lines[start].split(":")[0]
    end = next(i for i in range(start + 1, len(lines)) if re.search(rf"bra(\.uni)?\s+{re.escape(label)};", lines[i]))
    return lines[start:end + 1]


def test_the_down_projections_k_loop_shuffles_no_x_through_shared_memory():
    """Compiled offline for sm90 at the 1.1B shape's int8 down tile (two row pairs of 2048 columns, 8 warps; the
    shipped gemv's (4, 2048, 8) reads the same bytes a step): each K step is two 16-byte weight vectors and one of x,
    with no barrier or shared-memory traffic, where the shipped loop moves x through shared memory behind CTA-wide
    barriers. With two pipeline stages (``STAGES``), Triton copies the later steps' weights asynchronously. Chained
    by flags (``FLAGS``), the kernel polls the flag with acquire loads, sleeping between polls, instead of PDL's
    grid wait, and counts itself in with a release add."""
    pytest.importorskip("triton")
    pair, staged, flagged, shipped = compile_offline(_AOT, str(Path(rowpair.__file__).parent)).split("\n=====\n")
    assert "cp.async" in staged and "cp.async" not in pair + shipped
    assert "griddepcontrol.wait" in pair and "griddepcontrol.wait" not in flagged
    assert re.search(r"(atom|ld)(\.\w+)*\.(gpu\.acquire|acquire\.gpu)", flagged) and "nanosleep" in flagged
    assert re.search(r"(atom|red)(\.\w+)*\.(gpu\.release|release\.gpu)", flagged)
    for ptx in (pair, shipped):  # the same loads a step: 16-byte vectors, two of weights and one of x
        assert len([line for line in _loop(ptx) if re.search(r"ld\.global(\.\w+)*\.v4", line)]) == 3
    assert not [line for line in _loop(pair) if re.search(r"bar\.sync|st\.shared|ld\.shared", line)]
    assert [line for line in _loop(shipped) if re.search(r"bar\.sync", line)]


@pytest.fixture
def small_bench(monkeypatch):
    """The benchmark on small shapes with a small tile space, every launch run once and its timing stubbed (1 us a
    call): so a device call does not find a broken script."""
    shapes = {"qkv": (48, 128), "o": (32, 128), "gate_up": (384, 128), "down": (128, 192)}
    monkeypatch.setattr(rowpair, "SHAPES", shapes)
    for name, value in (("PAIRS", (4, 8)), ("BLOCK_K", (64, 128)), ("WARPS", (1, 2))):
        monkeypatch.setattr(rowpair, name, value)
    monkeypatch.setattr(rowpair, "bench_rotated", lambda fn, sets, device, replays=10: (fn(*sets[0]), 1e-6)[1])
    return rowpair


def test_the_benchmark_runs_end_to_end_on_small_shapes(small_bench, tmp_path):
    """The benchmark's whole flow (every call form, the tile loop, the value check of each tile, the MLP chain):
    each timed tile computed the product; the chain's five forms agree; the JSON on disk is the results."""
    import json

    out = tmp_path / "rowpair.json"
    r = small_bench.run(DEVICE, list(small_bench.SHAPES), 2, torch.float32, str(out), {"check_error": 0.0})
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and r["check_error"] == 0.0
    for name, row in r["shapes"].items():
        assert row["shipped"]["us"] == 1.0 and row["best"]["us"] == 1.0, (name, row)
        assert row["rowpair"] and all(v == 1.0 for v in row["rowpair"].values()), (name, row["rowpair"])
    # 32-128 bytes of weights a thread a step; down's K (192) in two steps or three
    assert set(r["shapes"]["down"]["rowpair"]) == {"[4, 128, 1]", "[8, 64, 1]", "[8, 128, 1]", "[8, 128, 2]"}
    chain = r["chain_us_per_layer"]
    assert all(chain[f"{name}_vs_shipped_error"] < 2e-2 for name in ("rowpair", "mixed", "flags", "flags late"))
    assert chain["shipped"] == chain["rowpair again"] == chain["flags late again"] == 0.5  # 1 us, 2 layers


def test_the_benchmark_at_given_tiles_stages_and_resident_weights(small_bench):
    """--tiles: one shape at the given tiles only, even one the sweep would not admit, with pipeline stages as a
    fourth field; --resident: the chain over one layer's weights, each layer the same call (at --dims' small
    widths)."""
    fixed = small_bench.run(DEVICE, ["down"], 0, torch.float32, None, None, {"down": (2, 64, 1)})
    assert list(fixed["shapes"]["down"]["rowpair"]) == ["[2, 64, 1]"] and not fixed["chain_us_per_layer"]
    staged = small_bench.run(DEVICE, ["down"], 0, torch.float32, None, None, {"down": (2, 64, 1, 2)})  # 2 stages
    assert staged["shapes"]["down"]["rowpair"] == {"[2, 64, 1, 2]": 1.0}
    small_bench.SHAPES.update(gate_up=(32, 64), down=(64, 16))  # --dims 64,16
    one = small_bench.run(DEVICE, ["gate_up", "down"], 2, torch.float32, None, None,
                          {"down": (2, 16, 1), "gate_up": (4, 64, 1)}, resident=True)["chain_us_per_layer"]
    assert one["mixed_vs_shipped_error"] < 2e-2 and one["flags_vs_shipped_error"] < 2e-2 and one["shipped"] == 0.5
