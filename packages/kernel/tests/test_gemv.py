"""The one-row gemv kernel (``kernel.triton.gemv``) against the references: float and int8 weights, a folded RMSNorm,
bias, residual, ragged N and K; its tile table; and the registry's ``triton_skinny`` linears routing one row to it
where the table has the shape. Under Triton's interpreter on a CPU, on the GPU with CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from kernel import reference as ref
from specs.errors import ConfigError

triton = pytest.importorskip("triton")

from triton_testing import DEVICE, DTYPES, check, compile_offline  # noqa: E402

from kernel.triton import gemv as gemv_mod  # noqa: E402
from kernel.triton._device import device_info  # noqa: E402

CONFIGS = [(1, 64, 1), (4, 128, 2), (8, 256, 4), (2, 1024, 4)]


def _inputs(dtype, N, K, seed, int8=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, K, generator=g).to(DEVICE, dtype)
    if int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
        s = (torch.rand(N, generator=g) / 127).to(DEVICE, dtype)
    else:
        w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
        s = None
    b = torch.randn(N, generator=g).to(DEVICE, dtype)
    r = torch.randn(1, N, generator=g).to(DEVICE, dtype)
    return x, w, s, b, r


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("N, K", [(48, 300), (33, 1030), (8, 64)])
def test_gemv_matches_the_reference(dtype, config, N, K):
    x, w, _, b, _ = _inputs(dtype, N, K, seed=N + K)
    got = gemv_mod.gemv(x, w, bias=b, config=config)
    assert got.shape == (1, N) and got.dtype == dtype
    check("gemv", got, ref.linear(x.float(), w.float(), b.float()), ref.linear(x, w, b), dtype, fp32_atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms, res, int8", [(True, False, False), (False, True, False), (True, True, False),
                                            (True, True, True), (False, False, True)])
def test_gemv_prologue_epilogue_and_int8(dtype, rms, res, int8):
    """rms_eps: rstd from x's own sum of squares; residual added last; int8 weights scaled per channel."""
    N, K = 70, 520
    x, w, s, b, r = _inputs(dtype, N, K, seed=7, int8=int8)
    eps = 1e-5 if rms else None
    resid = r if res else None
    got = gemv_mod.gemv(x, w, s, None if int8 else b, config=(4, 256, 2), rms_eps=eps, residual=resid)
    if int8:
        want32 = ref.int8_linear(x.float(), w, s.float(), rms_eps=eps, residual=None if resid is None else r.float())
        lowp = ref.int8_linear(x, w, s, rms_eps=eps, residual=resid)
    else:
        want32 = ref.linear(x.float(), w.float(), b.float(), rms_eps=eps, residual=None if resid is None else r.float())
        lowp = ref.linear(x, w, b, rms_eps=eps, residual=resid)
    check("gemv", got, want32, lowp, dtype, fp32_atol=2e-4)


def test_gemv_refuses_what_it_cannot_compute():
    x = torch.randn(2, 64, device=DEVICE)
    w = torch.randn(16, 64, device=DEVICE)
    with pytest.raises(ValueError, match=r"one contiguous activation row \(1, K\).*\(2, 64\)"):
        gemv_mod.gemv(x, w, config=(4, 64, 1))
    with pytest.raises(ValueError, match=r"weight \(16, 32\).*x \(1, 64\)"):
        gemv_mod.gemv(x[:1], torch.randn(16, 32, device=DEVICE), config=(4, 64, 1))


def _table(tmp_path, monkeypatch, entries: dict, card: str = "Test Card", name: str = "gemv.json"):
    path = tmp_path / name  # tables are read once per path
    path.write_text(json.dumps({"_meta": {"how": "test"}, card: entries}))
    monkeypatch.setenv(gemv_mod.TILES_ENV, str(path))
    return path


def test_gemv_tile_table_is_read_and_checked(tmp_path, monkeypatch):
    _table(tmp_path, monkeypatch, {"bf16 2560x2048": [4, 512, 4, 1], "bf16 2048x2048": [2, 512, 4, 0, 4]})
    assert gemv_mod.choose_tiles(2560, 2048, torch.bfloat16, "Test Card") == (4, 512, 4, 1)
    assert gemv_mod.choose_tiles(2048, 2048, torch.bfloat16, "Test Card") == (2, 512, 4, 0, 4)  # persistent
    assert gemv_mod.has_pdl_tiles("Test Card") and not gemv_mod.has_pdl_tiles("Other")
    assert gemv_mod.choose_tiles(2560, 2048, torch.int8, "Test Card") == ()  # not measured: the skinny matmul
    assert gemv_mod.choose_tiles(2560, 2048, torch.bfloat16, "Other") == ()
    monkeypatch.setenv(gemv_mod.SWITCH_ENV, "0")
    assert gemv_mod.choose_tiles(2560, 2048, torch.bfloat16, "Test Card") == ()
    assert not gemv_mod.has_pdl_tiles("Test Card")
    monkeypatch.setenv(gemv_mod.SWITCH_ENV, "yes")
    with pytest.raises(ConfigError, match="expected 0 .off. or 1"):
        gemv_mod.choose_tiles(2560, 2048, torch.bfloat16, "Test Card")
    monkeypatch.delenv(gemv_mod.SWITCH_ENV)
    for bad, why in (({"bf16 1x1": [4, 500, 4, 0]}, "powers of two"), ({"bf16 1x1": [4, 512, 4]}, "PDL"),
                     ({"bf16 1x1": [4, 512, 4, 2]}, "0 or 1"), ({"bf16 1x1": [4, 512, 4, True]}, "0 or 1"),
                     ({"bf16 1x1": [4, 512, 4, 1, -1]}, "a count >= 0"),
                     ([1, 2], "JSON object")):
        path = tmp_path / f"bad{len(why)}.json"
        path.write_text(json.dumps(bad if isinstance(bad, list) else {"Test Card": bad}))
        monkeypatch.setenv(gemv_mod.TILES_ENV, str(path))
        with pytest.raises(ConfigError, match=why):
            gemv_mod.load_tiles()
    monkeypatch.setenv(gemv_mod.TILES_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_TILES.*cannot read a tile table"):
        gemv_mod.load_tiles()


def test_shipped_gemv_table_is_well_formed(monkeypatch):
    monkeypatch.delenv(gemv_mod.TILES_ENV, raising=False)
    for card, entries in gemv_mod.load_tiles().items():
        for key, cfg in entries.items():
            dtype, shape, *form = key.split()  # "<shape> glu": the SwiGLU epilogue; "att": x from accumulators
            _, k = map(int, shape.split("x"))
            assert dtype in ("bf16", "fp16", "fp32", "int8") and form in ([], ["glu"], ["att"]), key
            assert len(cfg) in (4, 5), key
            assert form != ["glu"] or cfg[0] % 2 == 0, key  # the SwiGLU epilogue takes gate and up rows in pairs
            assert cfg[1] <= 2 * triton.next_power_of_2(k), (card, key)


@pytest.mark.parametrize("int8", [False, True])
def test_skinny_linears_route_one_row_to_gemv_where_the_table_has_the_shape(tmp_path, monkeypatch, int8):
    """With a table entry for this card, the registry's triton_skinny linear computes one row with the gemv kernel
    (same answer, folded norm and residual included); two rows, or a shape without an entry, keep the skinny
    matmul."""
    from kernel.triton import skinny

    dtype = torch.float32
    N, K = 40, 96
    x, w, s, b, r = _inputs(dtype, N, K, seed=3, int8=int8)
    card = device_info(x)[1]
    _table(tmp_path, monkeypatch, {gemv_mod.tile_key(N, K, w.dtype): [4, 32, 1, 1]}, card=card)
    calls = []
    real = gemv_mod.gemv
    monkeypatch.setattr(skinny, "gemv", lambda *a, **k: calls.append(k["config"]) or real(*a, **k))
    if int8:
        got = skinny.int8_linear(x, w, s, rms_eps=1e-5, residual=r)
        want = ref.int8_linear(x, w, s, rms_eps=1e-5, residual=r)
    else:
        got = skinny.linear(x, w, b, rms_eps=1e-5, residual=r)
        want = ref.linear(x, w, b, rms_eps=1e-5, residual=r)
    assert calls == [(4, 32, 1, 1)]  # the plain launch: the PDL field is for the PDL twin only
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    x2 = torch.cat([x, x])
    (skinny.int8_linear(x2, w, s) if int8 else skinny.linear(x2, w, b))
    assert len(calls) == 1  # two rows: the skinny matmul
    _table(tmp_path, monkeypatch, {gemv_mod.tile_key(N + 1, K, w.dtype): [4, 32, 1, 0]}, card=card,
           name="other.json")
    (skinny.int8_linear(x, w, s) if int8 else skinny.linear(x, w, b))
    assert len(calls) == 1  # no entry for this shape: the skinny matmul


def test_gemv_pdl_op_computes_the_same_and_declares_its_shape(tmp_path, monkeypatch):
    """The opaque op (Triton launches it, with PDL on sm90+) gives gemv's answer; its fake gives the shape; the
    registry's PDL twin routes one row to it where the table has the shape."""
    from kernel.triton import skinny

    x, w, _, b, r = _inputs(torch.float32, 40, 96, seed=5)
    want = gemv_mod.gemv(x, w, bias=b, config=(4, 32, 1), rms_eps=1e-5, residual=r)
    got = torch.ops.lmstack.gemv_pdl(x, w, None, b, 1e-5, r, 4, 32, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.lmstack.gemv_pdl, (x, w, None, b, 1e-5, r, 4, 32, 1),
                          test_utils=("test_schema", "test_faketensor"))
    card = device_info(x)[1]
    _table(tmp_path, monkeypatch, {gemv_mod.tile_key(40, 96, w.dtype): [4, 32, 1, 1]}, card=card)
    calls, plain = [], []
    real, real_plain = torch.ops.lmstack.gemv_pdl, gemv_mod.gemv
    monkeypatch.setattr(skinny.torch.ops.lmstack, "gemv_pdl", lambda *a: calls.append(a[6:]) or real(*a),
                        raising=False)
    monkeypatch.setattr(skinny, "gemv", lambda *a, **k: plain.append(k["config"]) or real_plain(*a, **k))
    torch.testing.assert_close(skinny.linear_pdl(x, w, b, rms_eps=1e-5, residual=r), want, rtol=1e-5, atol=1e-5)
    assert calls == [(4, 32, 1, False, 0)] and plain == []
    # a PDL field of 0: the twin launches the plain gemv
    _table(tmp_path, monkeypatch, {gemv_mod.tile_key(40, 96, w.dtype): [4, 32, 1, 0]}, card=card, name="plain.json")
    torch.testing.assert_close(skinny.linear_pdl(x, w, b, rms_eps=1e-5, residual=r), want, rtol=1e-5, atol=1e-5)
    assert calls == [(4, 32, 1, False, 0)] and plain == [(4, 32, 1, 0)]


_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps", "NS")}
# bf16 plain and PDL; int8 with the conversion instruction and with the add trick; int8 with PDL, the scales and
# residual loaded early (the default) and late ($LMSTACK_GEMV_CONSTS=late)
for weight, pdl, magic, late in (("*bf16", False, False, False), ("*bf16", True, False, False),
                                 ("*i8", False, False, False), ("*i8", False, True, False),
                                 ("*i8", True, True, False), ("*i8", True, True, True)):
    sig = dict(zip(names, ["*bf16", weight] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
    consts = dict(HAS_SCALE=weight == "*i8", HAS_BIAS=False, RMS=True, HAS_RES=True, GLU=False, ROWS=4,
                  BLOCK_K=2048, PDL=pdl, I8_MAGIC=magic, PERSISTENT=False, I8_F16=0, LATE=late, WVEC=0,
                  HOIST=0, ATT=0)
    src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": pdl})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_gemv_sm90_code_loads_weights_before_waiting_and_keeps_them_in_flight():
    """Compiled offline for sm90 (no GPU): a program's (4, 2048) weight block is eight 16-byte loads a thread, all
    issued before the first product; with PDL they come before ``griddepcontrol.wait`` and x's loads after it."""
    import re

    plain, pdl, int8, int8_magic, int8_pdl, int8_late, _ = compile_offline(_AOT).split("\n=====\n")
    # int8 weights: the int-to-float conversion (a quarter of the FP32 rate) only without the add trick
    # (a (4, 2048) block is 64 weights a thread; one or two conversions remain for scalars such as K)
    i2f = [len(re.findall(r"cvt\.rn\.f32\.s(?:8|16|32)\b", ptx)) for ptx in (int8, int8_magic)]
    assert i2f[0] >= 64 and i2f[1] <= 2, i2f
    for ptx in (plain, pdl):
        lines = ptx.splitlines()
        loads = [i for i, line in enumerate(lines) if re.search(r"ld\.global(\.\w+)*\.v4", line)]
        first_math = next(i for i, line in enumerate(lines) if re.search(r"\b(fma|mul)\.rn\.f32", line))
        assert sum(i < first_math for i in loads) >= 8, "the weight block's loads are not all in flight"
    assert "griddepcontrol" not in plain
    lines = pdl.splitlines()
    wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
    launch = next(i for i, line in enumerate(lines) if "griddepcontrol.launch_dependents" in line)
    loads = [i for i, line in enumerate(lines) if re.search(r"ld\.global(\.\w+)*\.v4", line)]
    assert sum(i < wait for i in loads) == 8 and wait < launch  # the weights before, x after, then the trigger
    # int8 with PDL: the rows' scales (two-byte loads) come before the wait with the weights, and no load is left
    # after the row sums (the warp shuffles); kernel 0.14's order ("late") loaded the scales and the residual there
    for ptx, late in ((int8_pdl, False), (int8_late, True)):
        lines = ptx.splitlines()
        wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
        last_sum = max(i for i, line in enumerate(lines) if "shfl.sync" in line)
        small = [i for i, line in enumerate(lines) if re.search(r"ld\.global(\.\w+)*\.b16", line)]
        assert (sum(i < wait for i in small) == 4) is not late, (late, small, wait)
        assert any(i > last_sum for i in small) is late, (late, small, last_sum)


_AOT_F16 = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import gemv
names = ["x_ptr", "w_ptr", "out_ptr", "scale_ptr", "bias_ptr", "res_ptr", "N", "K", "stride_wn", "rms_eps",
         "am_ptr", "al_ptr", "aacc_ptr", "NS"]
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in ("N", "rms_eps", "NS")}
sig = dict(zip(names, ["*bf16", "*i8"] + ["*bf16"] * 4 + ["i32"] * 3 + ["fp32"]
                   + ["*fp32"] * 3 + ["i32"]))
# the exact-add fp32 path ("magic") and the packed fp16 path (the default), session 10's int8 gate/up tile
for f16 in (0, 2):
    consts = dict(HAS_SCALE=True, HAS_BIAS=False, RMS=True, HAS_RES=False, GLU=True, ROWS=8, BLOCK_K=256, PDL=False,
                  I8_MAGIC=f16 == 0, PERSISTENT=False, I8_F16=f16, LATE=False, WVEC=0, HOIST=0, ATT=0)
    src = triton.compiler.ASTSource(fn=gemv._gemv, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                                    constexprs=consts, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 2})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_gemv_sm90_int8_f16_loop_converts_two_weights_an_instruction():
    """Compiled offline for sm90 ($LMSTACK_GEMV_INT8=f16 on a GPU: the inline PTX): the K loop turns int8 weights
    into fp16 pairs by byte permutes and packed subtractions and multiplies them by packed FMAs, with none of the
    fp32 path's integer and float adds, and issues under four fifths of its instructions (112 against 179 with
    Triton 3.9, 149 against 196 with the card's 3.6)."""
    import re
    from collections import Counter

    code = compile_offline(_AOT_F16)
    counts = []
    for ptx in code.split("\n=====\n")[:2]:
        lines = ptx.splitlines()
        head = next(i for i, line in enumerate(lines) if "Loop Header" in line)  # the K loop
        label = next(lines[i] for i in range(head, 0, -1) if lines[i].startswith("$L__BB")).split(":")[0]
        body = [line.split()[0] for line in lines[head:next(i for i in range(head, len(lines)) if re.search(
            rf"bra\S*\s+{re.escape(label)};", lines[i]))] if line.strip()
            and not line.strip().startswith(("//", ".loc", "$L", "{", "}", ".reg"))]
        counts.append(Counter(body))
    fp32, f16 = counts
    weights = 8 * 256 // 64  # a thread's share of one (8, 256) block
    assert fp32["fma.rn.f32"] >= weights and fp32["add.f32"] >= weights  # the exact add: a float add a weight
    assert f16["fma.rn.f16x2"] == weights // 2 and f16["sub.f16x2"] == weights // 2 and f16["prmt.b32"] == weights // 2
    assert f16["add.f32"] == 0 and f16["add.s32"] < weights // 4 and f16["fma.rn.f32"] < weights // 4
    assert sum(f16.values()) < 0.8 * sum(fp32.values()), (sum(f16.values()), sum(fp32.values()))


def test_one_row_pdl_linear_names_the_pdl_twin_only_where_the_card_chains_some_shape(tmp_path, monkeypatch):
    from kernel import one_row_pdl_linear

    assert one_row_pdl_linear("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Test Card")
    cap = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: cap[0])
    _table(tmp_path, monkeypatch, {"bf16 2560x2048": [2, 2048, 4, 1]})
    assert one_row_pdl_linear("cuda") == "triton_skinny_pdl"
    cap[0] = (8, 0)  # no PDL before Hopper
    assert one_row_pdl_linear("cuda:0") is None
    cap[0] = (9, 0)
    _table(tmp_path, monkeypatch, {"bf16 2560x2048": [2, 2048, 4, 0]}, name="plain.json")
    assert one_row_pdl_linear("cuda") is None  # gemv tiles, none chained
    monkeypatch.setenv(gemv_mod.SWITCH_ENV, "0")
    _table(tmp_path, monkeypatch, {"bf16 2560x2048": [2, 2048, 4, 1]}, name="off.json")
    assert one_row_pdl_linear("cuda") is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("rms", [False, True])
def test_gemv_returns_the_swiglu_of_a_fused_gate_up_weight(dtype, int8, rms):
    """glu: w is [gate | up] (2F rows) and the kernel stores silu(gate) * up (F values) from its epilogue, gate and
    up rows taken in pairs; the reference's glu="silu" is the matmul, then the SwiGLU op; with a folded norm too."""
    F, K = 37, 300  # odd F: the last program's pairs are partly masked
    x, w, s, b, _ = _inputs(dtype, 2 * F, K, seed=11, int8=int8)
    eps = 1e-5 if rms else None
    got = gemv_mod.gemv(x, w, s, None if int8 else b, config=(4, 128, 2), rms_eps=eps, glu=True)
    assert got.shape == (1, F)
    if int8:
        want32 = ref.int8_linear(x.float(), w, s.float(), rms_eps=eps, glu="silu")
        lowp = ref.int8_linear(x, w, s, rms_eps=eps, glu="silu")
        plain = ref.int8_linear(x.float(), w, s.float(), rms_eps=eps)
    else:
        want32 = ref.linear(x.float(), w.float(), b.float(), rms_eps=eps, glu="silu")
        lowp = ref.linear(x, w, b, rms_eps=eps, glu="silu")
        plain = ref.linear(x.float(), w.float(), b.float(), rms_eps=eps)
    check("gemv glu", got, want32, lowp, dtype, fp32_atol=2e-4)
    torch.testing.assert_close(want32, ref.swiglu(plain[:, :F], plain[:, F:]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="even number of weight rows .got 73."):
        gemv_mod.gemv(x, w[:-1].contiguous(), config=(4, 128, 2), glu=True)
    with pytest.raises(ValueError, match="ROWS .got 1."):
        gemv_mod.gemv(x, w, s, config=(1, 128, 2), glu=True)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("routed", [True, False])
def test_skinny_linears_take_a_glu_through_gemv_or_torch(tmp_path, monkeypatch, int8, routed):
    """The registry's triton_skinny linears with glu="silu": one row through gemv where the table has the shape
    (the SwiGLU in the epilogue; the plain entry's ROWS made even when no "glu" entry is measured), else the skinny
    matmul then torch's SwiGLU; both the reference's answer. Bad glu arguments raise errors that name them."""
    from kernel.triton import skinny
    from specs.errors import ShapeError

    F, K = 24, 64
    x, w, s, b, r = _inputs(torch.float32, 2 * F, K, seed=13, int8=int8)
    entries = {gemv_mod.tile_key(2 * F, K, w.dtype): [1, 64, 1, 0]} if routed else {}
    _table(tmp_path, monkeypatch, entries, card=device_info(x)[1], name=f"glu{routed}.json")
    configs = []
    real = gemv_mod.gemv
    monkeypatch.setattr(skinny, "gemv", lambda *a, **k: configs.append(k["config"]) or real(*a, **k))
    if int8:
        got = skinny.int8_linear(x, w, s, rms_eps=1e-5, glu="silu")
        want = ref.int8_linear(x, w, s, rms_eps=1e-5, glu="silu")
    else:
        got = skinny.linear(x, w, b, rms_eps=1e-5, glu="silu")
        want = ref.linear(x, w, b, rms_eps=1e-5, glu="silu")
    assert got.shape == (1, F)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert configs == ([(2, 64, 1, 0)] if routed else [])
    fn = ((lambda x_, **kw: skinny.int8_linear(x_, w, s, **kw)) if int8
          else (lambda x_, **kw: skinny.linear(x_, w, **kw)))
    with pytest.raises(ConfigError, match="glu must be one of"):
        fn(x, glu="gelu")
    with pytest.raises(ConfigError, match="glu and residual cannot be combined"):
        fn(x, glu="silu", residual=torch.zeros(1, 2 * F))
    wo = w[:-1].contiguous()
    odd = (lambda x_: skinny.int8_linear(x_, wo, s[:-1], glu="silu")) if int8 else (
        lambda x_: skinny.linear(x_, wo, glu="silu"))
    with pytest.raises(ShapeError, match="an even count; got 47"):
        odd(x)


def test_a_measured_glu_tile_is_preferred(tmp_path, monkeypatch):
    _table(tmp_path, monkeypatch, {"bf16 11264x2048": [1, 2048, 2, 1], "bf16 11264x2048 glu": [4, 1024, 4, 1]},
           name="gluentry.json")
    assert gemv_mod.choose_tiles(11264, 2048, torch.bfloat16, "Test Card") == (1, 2048, 2, 1)
    assert gemv_mod.choose_tiles(11264, 2048, torch.bfloat16, "Test Card", True) == (4, 1024, 4, 1)
    assert gemv_mod.choose_tiles(2560, 2048, torch.bfloat16, "Test Card", True) == ()


def test_int8_weights_converted_by_the_add_trick_give_the_same_bits(monkeypatch):
    """$LMSTACK_GEMV_INT8=magic: every int8 value, -128 to 127, becomes the same fp32 weight as the conversion
    instruction gives (``cvt``), so the results are identical; the default is "f16"; a bad value is refused naming
    the choices."""
    g = torch.Generator().manual_seed(17)
    N, K = 16, 256
    x = torch.randn(1, K, generator=g).to(DEVICE)
    w = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).repeat(N, 1).to(DEVICE)  # every value, each row
    w = w[:, torch.randperm(K, generator=g).to(DEVICE)].contiguous()
    s = (torch.rand(N, generator=g) / 127).to(DEVICE)
    monkeypatch.setenv(gemv_mod.INT8_ENV, "cvt")
    plain = gemv_mod.gemv(x, w, s, config=(4, 128, 2))
    assert gemv_mod.int8_mode() == "cvt"
    monkeypatch.setenv(gemv_mod.INT8_ENV, "magic")
    assert gemv_mod.int8_mode() == "magic"
    assert torch.equal(gemv_mod.gemv(x, w, s, config=(4, 128, 2)), plain)
    torch.testing.assert_close(plain, ref.int8_linear(x, w, s), rtol=1e-5, atol=1e-4)
    monkeypatch.delenv(gemv_mod.INT8_ENV)
    assert gemv_mod.int8_mode() == "f16"  # the default: fp16 products for bf16 x
    xb = x.to(torch.bfloat16)
    assert torch.equal(gemv_mod.gemv(x, w, s, config=(4, 128, 2)), plain)  # fp32 x keeps fp32 products
    assert not torch.equal(gemv_mod.gemv(xb, w, s, config=(4, 128, 2), out_dtype=torch.float32),
                           gemv_mod.gemv(xb.float(), w, s, config=(4, 128, 2)))
    monkeypatch.setenv(gemv_mod.INT8_ENV, "fast")
    with pytest.raises(ConfigError, match="expected 'f16' .the default., 'magic' or 'cvt', got 'fast'"):
        gemv_mod.gemv(x, w, s, config=(4, 128, 2))


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("per_sm", [1, 2])
def test_a_persistent_grid_loops_over_the_row_blocks(glu, per_sm):
    """PER_SM (a table entry's fifth field): a few programs per SM, each looping over row blocks; the same result
    as a program per block, the folded norm, the residual (or the SwiGLU epilogue) included, and through the PDL
    op too. (Off CUDA the heuristics see an 8-SM GPU: 200 rows in blocks of 2 loop several times; on a GPU the
    rows grow with its SMs.)"""
    N = max(200, 6 * per_sm * device_info(torch.empty(0, device=DEVICE))[0] + 6)
    x, w, _, b, r = _inputs(torch.float32, N, 96, seed=19)
    kw = dict(rms_eps=1e-5, glu=glu) if glu else dict(rms_eps=1e-5, residual=r)
    want = gemv_mod.gemv(x, w, None, b, config=(2, 64, 1), **kw)
    got = gemv_mod.gemv(x, w, None, b, config=(2, 64, 1, 0, per_sm), **kw)
    assert torch.equal(got, want)
    assert triton.cdiv(N, 2) > 2 * per_sm * device_info(x)[0]  # fewer programs than blocks: each loops
    op = torch.ops.lmstack.gemv_pdl(x, w, None, b, 1e-5, None if glu else r, 2, 64, 1, glu, per_sm)
    assert torch.equal(op, want)


def test_the_pdl_twin_keeps_the_plain_skinny_matmul_for_one_row_of_a_shape_without_gemv_tiles(tmp_path,
                                                                                               monkeypatch):
    """A decode loop that chains routes every Linear through triton_skinny_pdl; one row of a shape the card's gemv
    table lacks then takes the plain skinny matmul (its PDL launch never measured faster), several rows the
    skinny PDL op as before."""
    from kernel.triton import skinny

    x, w, _, b, _ = _inputs(torch.float32, 40, 96, seed=23)
    _table(tmp_path, monkeypatch, {}, card=device_info(x)[1], name="empty.json")
    ops = []
    real = torch.ops.lmstack.skinny_pdl
    monkeypatch.setattr(skinny.torch.ops.lmstack, "skinny_pdl", lambda *a: ops.append(a[0].shape[0]) or real(*a),
                        raising=False)
    assert torch.equal(skinny.linear_pdl(x, w, b), skinny.linear(x, w, b)) and ops == []
    x3 = torch.cat([x, x, x])
    assert torch.equal(skinny.linear_pdl(x3, w, b), skinny.linear(x3, w, b)) and ops == [3]


@pytest.mark.parametrize("kind", ["plain", "rms+residual", "glu", "persistent", "one block", "large x", "small x"])
def test_int8_f16_products_stay_within_a_bf16_rounding_of_the_reference(monkeypatch, kind):
    """$LMSTACK_GEMV_INT8=f16: int8 weights become fp16 exactly, x is scaled by 2^-7 and rounded to fp16, and the
    products and their per-K-step sums are fp16. For bf16 x (the mode's only inputs) the result stays within 0.3 of
    a bf16 unit in the last place (relative to the largest output; measured 0.02-0.08 here) of the fp64 reference
    on the same x: for every int8 value, a folded norm and residual, the SwiGLU epilogue, a persistent grid, a K of
    one block, and inputs of magnitude 2,000 (the fp16 sums' headroom) and 0.01 (scaled x nears fp16's subnormals;
    ~1e-3 gives 0.22 ulp and ~1e-4 three: the mode's known limit). fp32 and fp16 x keep fp32
    products. On a GPU the conversion is inline PTX; under the interpreter the same values come from Triton's own
    ops."""
    g = torch.Generator().manual_seed(37)
    N, K = (64, 60) if kind == "one block" else (70, 1000)
    x = (torch.randn(1, K, generator=g) * {"large x": 2000.0, "small x": 0.01}.get(kind, 3.0)).to(torch.bfloat16)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    m = min(K, 256)
    w[0, :m] = torch.arange(-128, -128 + m, dtype=torch.int16).to(torch.int8)  # every value (K permitting)
    s = torch.rand(N, generator=g) / 127
    r = torch.randn(1, N, generator=g)
    x, w, s, r = (t.to(DEVICE) for t in (x, w, s, r))
    kw = {"rms+residual": dict(rms_eps=1e-5, residual=r), "glu": dict(rms_eps=1e-5, glu=True)}.get(kind, {})
    config = (2, 128, 1, 0, 1) if kind == "persistent" else (4, 128, 2)
    monkeypatch.setenv(gemv_mod.INT8_ENV, "f16")
    assert gemv_mod.int8_mode() == "f16"
    got = gemv_mod.gemv(x, w, s, config=config, out_dtype=torch.float32, **kw)  # bf16 x (f16 takes bf16 x only)
    ref_kw = {**{k: v for k, v in kw.items() if k != "glu"}, **({"glu": "silu"} if kw.get("glu") else {})}
    want = ref.int8_linear(x.double(), w, s.double(), **{k: (v.double() if torch.is_tensor(v) else v)
                                                          for k, v in ref_kw.items()})
    err = (got.double() - want).abs().max().item()
    assert err <= 0.3 * torch.finfo(torch.bfloat16).eps * want.abs().max().item(), err
    monkeypatch.setenv(gemv_mod.INT8_ENV, "magic")
    exact = gemv_mod.gemv(x, w, s, config=config, out_dtype=torch.float32, **kw)
    assert not torch.equal(got, exact)  # the fp16 path did run
    monkeypatch.setenv(gemv_mod.INT8_ENV, "f16")
    for other in (torch.float32, torch.float16):  # fp32 and fp16 x: fp32 products
        assert torch.equal(gemv_mod.gemv(x.to(other), w, s, config=config, out_dtype=torch.float32, **kw), exact)


@pytest.mark.skipif(DEVICE != "cuda", reason="the inline PTX runs on a GPU only; elsewhere the Triton-op form runs")
def test_int8_f16_inline_ptx_gives_the_triton_op_forms_bits(monkeypatch):
    """On a GPU, the inline-PTX conversion (I8_F16 2) and the Triton-op form (1) give the same fp16 weights, so the
    same result bit for bit."""
    x, w, s, _, r = _inputs(torch.bfloat16, 70, 1000, seed=41, int8=True)
    w[0, :256] = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).to(DEVICE)
    monkeypatch.setenv(gemv_mod.INT8_ENV, "f16")
    assert gemv_mod._i8_f16(w, 8) == 2
    asm = gemv_mod.gemv(x, w, s, config=(4, 128, 2), rms_eps=1e-5, residual=r)
    monkeypatch.setattr(gemv_mod, "_i8_f16", lambda w_, per_thread, x_dtype: 1)
    assert torch.equal(gemv_mod.gemv(x, w, s, config=(4, 128, 2), rms_eps=1e-5, residual=r), asm)


def test_int8_f16_form_follows_the_device_and_the_tile(monkeypatch):
    """The inline PTX takes four weights a call: it runs where a thread holds at least four of a block, outside
    Triton's interpreter; elsewhere the Triton-op form (the same values); float weights and the other modes: 0."""
    w8, wf = torch.zeros(4, 4, dtype=torch.int8), torch.zeros(4, 4)
    monkeypatch.setenv(gemv_mod.INT8_ENV, "f16")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gemv_mod._i8_f16(w8, 4) == 2 and gemv_mod._i8_f16(w8, 2) == 1 and gemv_mod._i8_f16(wf, 8) == 0
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gemv_mod._i8_f16(w8, 32) == 1
    monkeypatch.setenv(gemv_mod.INT8_ENV, "magic")
    assert gemv_mod._i8_f16(w8, 32) == 0


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("per_sm", [0, 2])
def test_scales_bias_and_residual_give_the_same_bits_loaded_early_or_late(monkeypatch, glu, per_sm):
    """$LMSTACK_GEMV_CONSTS: the rows' int8 scales and bias loaded with the first weight block and the residual with
    x ("early", the default), or all three after the row sums ("late", kernel 0.14's order), give the same bits,
    on a program per row block and on a persistent grid (whose next block's scales and bias are loaded ahead); the
    reference agrees; anything else is refused by name."""
    N = max(200, 6 * max(per_sm, 1) * device_info(torch.empty(0, device=DEVICE))[0] + 6)
    x, w, s, b, r = _inputs(torch.bfloat16, N, 160, seed=23, int8=True)
    kw = dict(rms_eps=1e-5, glu=glu) if glu else dict(rms_eps=1e-5, residual=r)
    got = {}
    for order in ("early", "late"):
        monkeypatch.setenv(gemv_mod.CONSTS_ENV, order)
        got[order] = gemv_mod.gemv(x, w, s, b, config=(2, 64, 1, 0, per_sm), **kw)
    assert torch.equal(got["early"], got["late"])
    y = ref.rmsnorm(x.float(), None, 1e-5) @ (w.float() * s.float()[:, None]).T + b.float()
    if glu:
        gate, up = y.to(torch.bfloat16).float().chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    else:
        y = y + r.float()
    torch.testing.assert_close(got["early"].float(), y, rtol=2e-2, atol=2e-2)
    monkeypatch.setenv(gemv_mod.CONSTS_ENV, "soon")
    with pytest.raises(ConfigError, match="LMSTACK_GEMV_CONSTS.*'early' .* or 'late', got 'soon'"):
        gemv_mod.gemv(x, w, s, b, config=(2, 64, 1), **kw)
