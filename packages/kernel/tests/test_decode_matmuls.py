"""The decode matmuls against the references: the skinny matmul (bf16 and int8 weights), the int8 GEMV, a folded
RMSNorm and a residual in their prologue and epilogue, split K summed after or in the kernel, and the tile tables.
Under Triton's interpreter on a CPU, on the GPU with CUDA (tolerances: ``triton_testing``)."""

from __future__ import annotations

import pytest
import torch

from kernel import default_registry
from kernel import reference as ref
from specs.errors import ConfigError, ShapeError

triton = pytest.importorskip("triton")

from triton_testing import DEVICE, DTYPES, check, triton_fn  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, with_bias", [(1, 48, 300, False), (3, 33, 256, True), (20, 16, 64, False)])
def test_int8_linear_matches_reference(dtype, M, N, K, with_bias):
    g = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    s = (torch.rand(N, generator=g) / 127).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if with_bias else None
    got = triton_fn("int8_linear")(x, w, s, b)
    assert got.shape == (M, N) and got.dtype == dtype
    ref32 = ref.int8_linear(x.float(), w, s.float(), None if b is None else b.float())
    check("int8_linear", got, ref32, ref.int8_linear(x, w, s, b), dtype, fp32_atol=1e-4)
    got3 = triton_fn("int8_linear")(x.reshape(M, 1, K), w, s, b)  # leading dims are kept
    assert got3.shape == (M, 1, N)


def test_int8_linear_is_picked_on_gpu_for_inference_only():
    reg = default_registry()
    assert reg.select("int8_linear", "auto", device="cuda", dtype=torch.bfloat16,
                      capability=(9, 0)).name == "triton_skinny"
    assert reg.select("linear", "auto", device="cuda", dtype=torch.bfloat16, capability=(9, 0)).name == "triton_skinny"
    assert reg.select("linear", "auto", device="cpu", dtype=torch.bfloat16).name == "reference"
    assert reg.select("linear", "auto", device="cuda", dtype=torch.float32, capability=(9, 0)).name == "reference"
    assert reg.select("int8_linear", "auto", device="cuda", dtype=torch.bfloat16, capability=(9, 0),
                      backward=True).name == "reference"


def skinny_fn(op):
    return default_registry().get(op, "triton_skinny").load()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, with_bias", [(1, 48, 300, False), (3, 33, 1030, True), (16, 70, 64, False),
                                                (20, 16, 64, True)])
def test_skinny_linear_matches_reference(dtype, M, N, K, with_bias):
    g = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if with_bias else None
    got = skinny_fn("linear")(x.reshape(M, 1, K), w, b)  # leading dims kept
    assert got.shape == (M, 1, N) and got.dtype == dtype
    ref32 = ref.linear(x.float(), w.float(), None if b is None else b.float())
    check("linear", got.reshape(M, N), ref32, ref.linear(x, w, b), dtype, fp32_atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, with_bias", [(1, 48, 300, False), (3, 33, 2100, True)])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("impl", ["triton_skinny", "triton"])
def test_int8_linears_with_and_without_a_prologue_match_reference(dtype, M, N, K, with_bias, prologue, impl):
    """Both Triton int8 implementations, plain and with a folded RMSNorm (``rms_eps``) and a residual (the skinny
    matmul fuses them; the GEMV leaves them to the reference)."""
    g = torch.Generator().manual_seed(M * N + K)
    x = (torch.randn(M, K, generator=g) * 3).to(DEVICE, dtype)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    s = (torch.rand(N, generator=g) / 127 / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if with_bias else None
    r = torch.randn(M, N, generator=g).to(DEVICE, dtype) if prologue else None
    kw = {"rms_eps": 1e-5, "residual": r} if prologue else {}
    got = default_registry().get("int8_linear", impl).load()(x, w, s, b, **kw)
    f32 = {"rms_eps": 1e-5, "residual": r.float()} if prologue else {}
    ref32 = ref.int8_linear(x.float(), w, s.float(), None if b is None else b.float(), **f32)
    check("int8_linear", got, ref32, ref.int8_linear(x, w, s, b, **kw), dtype, fp32_atol=1e-4)


def test_int8_linear_reference_prologue_is_rmsnorm_then_int8_linear_then_add():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(2, 8, generator=g), torch.randn(2, 5, generator=g)
    w, s = torch.randint(-127, 128, (5, 8), generator=g, dtype=torch.int8), torch.rand(5, generator=g) / 100
    xn = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(ref.int8_linear(x, w, s, rms_eps=1e-6, residual=r), (xn @ w.float().T) * s + r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms, res", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M, N, K, config", [(1, 40, 300, None), (3, 70, 200, (32, 32, 4, 3, 4)),
                                             (20, 16, 64, None), (5, 24, 2500, None), (16, 8, 4100, None)])
def test_skinny_linear_with_rms_prologue_and_residual_epilogue(dtype, rms, res, M, N, K, config):
    """rms_eps: x RMS-normalised inside the matmul (never split, even when the tiles ask for it); residual: added
    in the epilogue (after the split-K sum when split); both as the reference computes them. The rows' sums of
    squares come from a block of x loaded before the weight loop (RMS_BLOCK values) and, past it (K above 2048,
    more rows than fit), from blocks loaded after it: the last two shapes take that path."""
    from kernel.triton.skinny import skinny_mm

    g = torch.Generator().manual_seed(M + N + K)
    x = (torch.randn(M, K, generator=g) * 3).to(DEVICE, dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype)
    r = torch.randn(M, N, generator=g).to(DEVICE, dtype) if res else None
    kw = {"rms_eps": 1e-5 if rms else None, "residual": r}
    if config is None:
        got = skinny_fn("linear")(x, w, b, **kw)
    else:
        got = skinny_mm(x, w, bias=b, config=config, **kw)
    assert got.shape == (M, N) and got.dtype == dtype
    f32 = {"rms_eps": kw["rms_eps"], "residual": None if r is None else r.float()}
    ref32 = ref.linear(x.float(), w.float(), b.float(), **f32)
    check("linear", got, ref32, ref.linear(x, w, b, **kw), dtype, fp32_atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, config", [(1, 40, 200, (32, 32, 4, 3, 4)), (3, 70, 200, (16, 64, 2, 2, 4)),
                                             (2, 70, 300, (64, 128, 3, 4, 8)), (5, 24, 2500, (16, 64, 2, 3, 4)),
                                             (16, 8, 4100, (16, 64, 2, 3, 4))])
@pytest.mark.parametrize("int8", [False, True])
def test_skinny_serial_split_k_sums_in_the_kernel(dtype, M, N, K, config, int8):
    """split_counters: a split K is summed by the last split of each column tile to finish, with the rest of the
    epilogue (rstd of a folded RMSNorm from the splits' sums of squares, scale, bias, residual): one kernel. The
    result is the reference's; the counters come back zeroed, and the entry past the column tiles untouched. The
    last two shapes take the after-loop path of the sums of squares."""
    from kernel.triton.skinny import counters_needed, skinny_mm, skinny_plan

    g = torch.Generator().manual_seed(M + N + K)
    x = (torch.randn(M, K, generator=g) * 3).to(DEVICE, dtype)
    if int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
        s = (torch.rand(N, generator=g) / 127 / K ** 0.5).to(DEVICE, dtype)
    else:
        w, s = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype), None
    b = torch.randn(N, generator=g).to(DEVICE, dtype)
    r = torch.randn(M, N, generator=g).to(DEVICE, dtype)
    kw = {"rms_eps": None if int8 else 1e-5, "residual": None if int8 else r}
    assert skinny_plan(x, w, config, kw["rms_eps"], serial=True)[2] > 1
    cnt = torch.zeros(counters_needed(N) + 1, dtype=torch.int32, device=DEVICE)
    cnt[-1] = 7
    got = skinny_mm(x, w, s, b, config=config, split_counters=cnt, **kw)
    assert got.shape == (M, N) and got.dtype == dtype
    assert not cnt[:-1].any() and cnt[-1].item() == 7
    if int8:
        ref32, lowp = ref.int8_linear(x.float(), w, s.float(), b.float()), ref.int8_linear(x, w, s, b)
    else:
        f32 = {"rms_eps": 1e-5, "residual": r.float()}
        ref32, lowp = ref.linear(x.float(), w.float(), b.float(), **f32), ref.linear(x, w, b, **kw)
    check("serial split-K linear", got, ref32, lowp, dtype, fp32_atol=1e-4)
    with pytest.raises(ShapeError, match="split_counters should be a contiguous int32 buffer of at least one per"):
        skinny_mm(x, w, s, b, config=config, split_counters=cnt[:0], **kw)


def test_split_combine_switch_reads_the_environment(monkeypatch):
    monkeypatch.delenv("LMSTACK_SPLIT_COMBINE", raising=False)
    assert ref.split_combine_in_kernel() is False  # a second pass by default (measured level, docs/benchmarks.md)
    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "kernel")
    assert ref.split_combine_in_kernel() is False
    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "last")
    assert ref.split_combine_in_kernel() is True
    monkeypatch.setenv("LMSTACK_SPLIT_COMBINE", "yes")
    with pytest.raises(ConfigError, match="LMSTACK_SPLIT_COMBINE.*got 'yes'"):
        ref.split_combine_in_kernel()


def test_linear_reference_rms_and_residual_are_rmsnorm_then_linear_then_add():
    g = torch.Generator().manual_seed(0)
    x, w, r = torch.randn(2, 3, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(2, 3, 5, generator=g)
    xn = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(ref.linear(x, w, rms_eps=1e-6, residual=r), xn @ w.T + r)


def test_skinny_default_tiles_split_k_only_when_most_sms_would_idle():
    from kernel.triton.skinny import tiles

    assert tiles(2048, 2048, 2, 132) == (32, 128, 1, 5, 4)  # 64 column tiles: enough, no split-K
    assert tiles(11264, 2048, 2, 132)[2] == 1
    assert tiles(512, 4096, 2, 132)[2] == 8  # 16 column tiles x 8 splits: at least half the SMs busy
    assert tiles(48, 300, 2, 132)[2] == 1  # too little K to split
    assert tiles(2048, 5632, 1, 132)[:2] == (32, 256)  # int8: 256-byte rows of K per stage as well


@pytest.mark.parametrize("config", [(16, 64, 1, 2, 4), (32, 32, 3, 3, 4), (64, 128, 2, 4, 8)])
@pytest.mark.parametrize("int8", [False, True])
def test_skinny_every_tile_config_gives_the_same_answer(config, int8):
    """Unsplit tiles finish in the kernel (scale, bias, cast); split ones sum fp32 partials after: both exact."""
    from kernel.triton.skinny import skinny_mm

    g = torch.Generator().manual_seed(7)
    M, N, K = 2, 70, 200
    x = torch.randn(M, K, generator=g).to(DEVICE)
    if int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
        s = (torch.rand(N, generator=g) / 127).to(DEVICE)
        want = ref.int8_linear(x, w, s, None)
    else:
        w = torch.randn(N, K, generator=g).to(DEVICE)
        s = None
        want = ref.linear(x, w, None)
    b = torch.randn(N, generator=g).to(DEVICE)
    got = skinny_mm(x, w, s, b, config=config)
    torch.testing.assert_close(got, want + b, rtol=1e-5, atol=1e-4)
    assert skinny_mm(x, w, s, config=config, out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_skinny_tile_table_is_read_and_checked(tmp_path, monkeypatch):
    import json

    from kernel.triton import _tables, skinny

    table = tmp_path / "tiles.json"
    table.write_text(json.dumps({"_meta": {}, "Test Card": {"bf16 2560x2048": [16, 64, 1, 3, 2]}}))
    monkeypatch.setenv(skinny.TILES_ENV, str(table))
    assert skinny.choose_tiles(2560, 2048, torch.bfloat16, 132, "Test Card") == (16, 64, 1, 3, 2)
    # other shapes, dtypes and cards fall back to the heuristic
    assert skinny.choose_tiles(2560, 2048, torch.int8, 132, "Test Card") == skinny.tiles(2560, 2048, 1, 132)
    assert skinny.choose_tiles(2560, 2048, torch.bfloat16, 132, "Other") == skinny.tiles(2560, 2048, 2, 132)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Test Card": {"bf16 8x8": [16, 64, 0]}}))
    monkeypatch.setenv(skinny.TILES_ENV, str(bad))
    with pytest.raises(ConfigError, match="five positive integers"):
        skinny.load_tiles()
    for doc, msg in (([1, 2], "expected a JSON object"), ({"Card": [16, 64, 1, 3, 2]}, "should map shape keys")):
        bad.write_text(json.dumps(doc))
        monkeypatch.setattr(_tables, "_cache", {})  # read afresh
        monkeypatch.setenv(skinny.TILES_ENV, str(bad))
        with pytest.raises(ConfigError, match=msg):
            skinny.load_tiles()
    monkeypatch.setenv(skinny.TILES_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="LMSTACK_SKINNY_TILES.*cannot read a tile table"):
        skinny.load_tiles()


def test_shipped_skinny_tile_table_is_well_formed(monkeypatch):
    from kernel.triton import skinny

    monkeypatch.delenv(skinny.TILES_ENV, raising=False)
    for card, entries in skinny.load_tiles().items():
        for key, cfg in entries.items():
            dtype, shape = key.split(" ")
            assert dtype in ("bf16", "fp16", "fp32", "int8") and len(shape.split("x")) == 2, (card, key)
            block_n, block_k, split, stages, warps = cfg
            assert block_n >= 16 and block_k >= 16 and warps in (1, 2, 4, 8, 16), (card, key, cfg)
