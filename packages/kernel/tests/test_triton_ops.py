"""Triton kernels against the references: forward and backward, fp32 / fp16 / bf16, small shapes (norms, RoPE,
SwiGLU, the losses, attention, decode attention; the decode matmuls are in test_decode_matmuls.py).

Under Triton's interpreter on a CPU-only machine (TRITON_INTERPRET=1, set in conftest.py), on the GPU with CUDA;
the low-precision tolerance is ``triton_testing.check``'s.
"""

from __future__ import annotations

import pytest
import torch

from kernel import default_registry
from kernel import reference as ref
from specs.errors import ConfigError, ShapeError
from tensor.rope import rope_cos_sin, rope_inv_freq

triton = pytest.importorskip("triton")

from triton_testing import DEVICE, DTYPES, INTERPRETED, check, grads, rand, triton_fn  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rmsnorm(dtype, with_weight):
    x = rand(3, 5, 40, dtype=dtype)
    w = (1 + 0.1 * rand(40, dtype=torch.float32, seed=1)).to(dtype) if with_weight else None
    g = rand(3, 5, 40, dtype=torch.float32, seed=2)
    fn = triton_fn("rmsnorm")
    args = (x, w) if with_weight else (x,)
    wrap = (lambda f: lambda *a: f(a[0], a[1] if with_weight else None, 1e-6))
    out, gr = grads(wrap(fn), args, g)
    out32, gr32 = grads(wrap(ref.rmsnorm), [a.float() for a in args], g)
    out_lp, gr_lp = grads(wrap(ref.rmsnorm), args, g)
    check("rmsnorm", out, out32, out_lp, dtype)
    for a, b, c in zip(gr, gr32, gr_lp):
        check("rmsnorm grad", a, b, c, dtype, fp32_atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope(dtype):
    B, H, T, Dh = 2, 3, 7, 32
    x = rand(B, H, T, Dh, dtype=dtype)
    cos, sin = rope_cos_sin(torch.arange(T, device=DEVICE)[None] + 5, rope_inv_freq(Dh, 10000.0))
    g = rand(B, H, T, Dh, dtype=torch.float32, seed=3)
    fn = triton_fn("rope")
    out, (gx,) = grads(lambda t: fn(t, cos.to(dtype), sin.to(dtype)), [x], g)
    out32, (gx32,) = grads(lambda t: ref.rope(t, cos, sin), [x.float()], g)
    out_lp, (gx_lp,) = grads(lambda t: ref.rope(t, cos.to(dtype), sin.to(dtype)), [x], g)
    check("rope", out, out32, out_lp, dtype)
    check("rope grad", gx, gx32, gx_lp, dtype)
    # the backward is the inverse rotation: rope(x) then its backward applied to rope(x) gives x back
    assert torch.allclose(fn(x.float(), cos, sin).norm(dim=-1), x.float().norm(dim=-1), atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype):
    gate, up = rand(4, 9, 33, dtype=dtype), rand(4, 9, 33, dtype=dtype, seed=1)
    g = rand(4, 9, 33, dtype=torch.float32, seed=2)
    out, gr = grads(triton_fn("swiglu"), [gate, up], g)
    out32, gr32 = grads(ref.swiglu, [gate.float(), up.float()], g)
    out_lp, gr_lp = grads(ref.swiglu, [gate, up], g)
    check("swiglu", out, out32, out_lp, dtype)
    for a, b, c in zip(gr, gr32, gr_lp):
        check("swiglu grad", a, b, c, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 7])
def test_linear_cross_entropy(dtype, chunk):
    N, D, V = 29, 24, 130
    h, w = rand(N, D, dtype=dtype), (0.3 * rand(V, D, dtype=torch.float32, seed=1)).to(dtype)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    y[::5] = -100
    one = torch.ones((), device=DEVICE)
    fn = triton_fn("linear_cross_entropy")
    loss, gr = grads(lambda a, b: fn(a, b, y, chunk_size=chunk), [h, w], one)
    loss32, gr32 = grads(lambda a, b: ref.linear_cross_entropy(a, b, y), [h.float(), w.float()], one)
    # torch's low-precision path: bf16/fp16 logits, cross-entropy and autograd in that dtype
    loss_lp, gr_lp = grads(lambda a, b: torch.nn.functional.cross_entropy(a @ b.T, y), [h, w], one)
    check("linear_ce loss", loss, loss32, loss_lp, dtype)
    for a, b, c in zip(gr, gr32, gr_lp):
        check("linear_ce grad", a, b, c, dtype)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_linear_cross_entropy_with_one_input_frozen(inplace, frozen):
    """A frozen LM head (LoRA fine-tuning) or frozen hidden states: the other input's gradient alone, the
    reference's (the backward used to index a weight gradient that was never saved)."""
    from kernel.triton.linear_ce import linear_cross_entropy_inplace

    N, D, V = 29, 24, 130
    fn = linear_cross_entropy_inplace if inplace else triton_fn("linear_cross_entropy")
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    got, want = [], []
    for f, out in ((fn, got), (ref.linear_cross_entropy, want)):
        h = rand(N, D, dtype=torch.float32).requires_grad_(frozen == "weight")
        w = (0.3 * rand(V, D, dtype=torch.float32, seed=1)).requires_grad_(frozen == "hidden")
        f(h, w, y).backward()
        out.append((h if frozen == "weight" else w).grad)
        assert (w if frozen == "weight" else h).grad is None
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 7])
def test_linear_cross_entropy_inplace(dtype, chunk):
    """Logits in the inputs' dtype, overwritten by their gradient: the loss and both gradients of the fp32
    reference within the tolerance of torch's own low-precision path."""
    from kernel.triton.linear_ce import linear_cross_entropy_inplace

    N, D, V = 29, 24, 130
    h, w = rand(N, D, dtype=dtype), (0.3 * rand(V, D, dtype=torch.float32, seed=1)).to(dtype)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    y[::5] = -100
    one = torch.ones((), device=DEVICE)
    loss, gr = grads(lambda a, b: linear_cross_entropy_inplace(a, b, y, chunk_size=chunk), [h, w], one)
    loss32, gr32 = grads(lambda a, b: ref.linear_cross_entropy(a, b, y), [h.float(), w.float()], one)
    loss_lp, gr_lp = grads(lambda a, b: torch.nn.functional.cross_entropy(a @ b.T, y), [h, w], one)
    check("linear_ce_inplace loss", loss, loss32, loss_lp, dtype)
    for a, b, c in zip(gr, gr32, gr_lp):
        assert a.dtype == dtype
        check("linear_ce_inplace grad", a, b, c, dtype)
    assert default_registry().get("linear_cross_entropy", "triton_inplace").target.endswith(
        "linear_cross_entropy_inplace")


def test_linear_cross_entropy_inplace_under_autocast_keeps_fp32_gradients():
    """Under bf16 autocast (fp32 master weights, as in training) the logits are bf16; the gradients come back in
    the parameters' fp32, scaled by the upstream gradient, close to torch's autocast path."""
    from kernel.triton.linear_ce import linear_cross_entropy_inplace

    N, D, V = 33, 32, 150
    h, w = rand(N, D, dtype=torch.float32), 0.3 * rand(V, D, dtype=torch.float32, seed=1)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    g = torch.full((), 2.5, device=DEVICE)
    with torch.autocast(DEVICE if DEVICE == "cuda" else "cpu", dtype=torch.bfloat16):
        loss, gr = grads(lambda a, b: linear_cross_entropy_inplace(a, b, y), [h, w], g)
        loss_lp, gr_lp = grads(lambda a, b: torch.nn.functional.cross_entropy((a @ b.T).float(), y), [h, w], g)
    loss32, gr32 = grads(lambda a, b: ref.linear_cross_entropy(a, b, y), [h, w], g)
    check("autocast loss", loss, loss32, loss_lp, torch.bfloat16)
    for a, b, c in zip(gr, gr32, gr_lp):
        assert a.dtype == torch.float32
        check("autocast grad", a, b, c, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(dtype):
    logits = rand(19, 77, dtype=dtype)
    y = torch.randint(0, 77, (19,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    y[3] = -100
    before = logits.clone()
    one = torch.ones((), device=DEVICE)
    loss, (g,) = grads(lambda t: triton_fn("cross_entropy")(t, y), [logits], one)
    loss32, (g32,) = grads(lambda t: ref.cross_entropy(t, y), [logits.float()], one)
    loss_lp, (g_lp,) = grads(lambda t: torch.nn.functional.cross_entropy(t, y), [logits], one)
    check("ce loss", loss, loss32, loss_lp, dtype)
    check("ce grad", g, g32, g_lp, dtype)
    assert torch.equal(logits, before)  # the caller's logits are never overwritten
    all_ignored = triton_fn("cross_entropy")(logits, torch.full_like(y, -100))
    assert all_ignored.item() == 0.0


def _causal(f):
    return lambda q, k, v: f(q, k, v, causal=True)


def test_attention_backward_low_precision_and_gqa():
    from kernel.testing import lowp_attention

    fn = triton_fn("attention")
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = rand(1, 4, 12, 32, dtype=dtype), rand(1, 2, 12, 32, dtype=dtype, seed=1), \
            rand(1, 2, 12, 32, dtype=dtype, seed=2)
        g = rand(1, 4, 12, 32, dtype=torch.float32, seed=3)
        _, gr = grads(_causal(fn), [q, k, v], g)
        _, gr32 = grads(_causal(ref.attention), [q.float(), k.float(), v.float()], g)
        _, gr_lp = grads(_causal(lowp_attention), [q, k, v], g)
        for name, a, b, c in zip("qkv", gr, gr32, gr_lp):
            check(f"attention d{name}", a, b, c, dtype)


def test_registry_picks_triton_only_on_gpu():
    reg = default_registry()
    for op in ("attention", "rmsnorm", "rope", "swiglu", "cross_entropy", "linear_cross_entropy"):
        assert reg.select(op, "auto", device="cpu", dtype=torch.bfloat16).name != "triton"
        # attention: torch SDPA measured faster than the Triton kernel on Hopper, so it outranks it
        best = "sdpa" if op == "attention" else "triton"
        assert reg.select(op, "auto", device="cuda", dtype=torch.bfloat16, capability=(9, 0)).name == best
        assert reg.select(op, "auto", device="cuda", dtype=torch.bfloat16, capability=(7, 5)).name != "triton"
        assert "runs on cuda only" in reg.why_not(op, "triton", device="cpu")


@pytest.mark.skipif(not INTERPRETED, reason="documents the interpreter's rounding")
def test_interpreter_bf16_conversion_truncates():
    import triton.language as tl

    @triton.jit
    def cvt(x_ptr, o_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(o_ptr + i, tl.load(x_ptr + i).to(tl.bfloat16))

    x = torch.randn(256, generator=torch.Generator().manual_seed(0))
    out = torch.empty(256, dtype=torch.bfloat16)
    cvt[(1,)](x, out, N=256)
    truncated = (x.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    assert torch.equal(out, truncated) and not torch.equal(out, x.to(torch.bfloat16))


def _decode_case(dtype, B, H, KVH, Dh, L, lens, paged, block_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Dh, generator=g).to(DEVICE, dtype)
    lens_B = torch.tensor(lens, device=DEVICE)
    if not paged:
        k = torch.randn(B, KVH, L, Dh, generator=g).to(DEVICE, dtype)
        v = torch.randn(B, KVH, L, Dh, generator=g).to(DEVICE, dtype)
        return q, k, v, lens_B, {}
    nb = -(-L // block_size)
    num_blocks = B * nb + 3
    k = torch.randn(num_blocks * block_size, KVH, Dh, generator=g).to(DEVICE, dtype)
    v = torch.randn(num_blocks * block_size, KVH, Dh, generator=g).to(DEVICE, dtype)
    table = torch.randperm(num_blocks, generator=g)[: B * nb].reshape(B, nb).to(DEVICE, torch.int32)
    return q, k, v, lens_B, {"block_table": table, "block_size": block_size}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("B, H, KVH, Dh, L, lens", [
    (3, 8, 2, 32, 150, [150, 1, 77]), (2, 4, 4, 24, 20, [0, 13]), (1, 6, 1, 64, 9, [9]),
    (4, 8, 4, 16, 150, [150, 1, 77, 0]),  # rows x KV heads fill the interpreter's 8 SMs: one pass, several blocks
    # split over the slots (num_splits > 1 at 8 SMs, the interpreter's, and at a GPU's count): 200 slots in three
    # full splits and a short one; splits left empty by a short row (1 slot, 130 of 200); a row of length 0; chunks
    # of two BLOCK_S blocks, the last short, the rest empty (1100 slots over the interpreter's 16 splits)
    (2, 4, 2, 32, 200, [200, 130]), (1, 4, 2, 32, 300, [1]), (1, 2, 1, 16, 300, [0]), (1, 4, 1, 32, 1100, [1100])])
@pytest.mark.parametrize("counters", [False, True])
def test_decode_attention_matches_reference(dtype, paged, B, H, KVH, Dh, L, lens, counters):
    """counters: split_counters given, so the last split of each (row, KV head) combines (no second kernel); the
    buffer (one entry more than needed, which must stay untouched) comes back zeroed for the next call."""
    q, k, v, lens_B, kw = _decode_case(dtype, B, H, KVH, Dh, L, lens, paged)
    cnt = torch.zeros(B * KVH + 1, dtype=torch.int32, device=DEVICE) if counters else None
    got = triton_fn("decode_attention")(q, k, v, lens_B, split_counters=cnt, **kw)
    assert got.shape == (B, H, Dh) and got.dtype == dtype
    if counters:  # (the same partials in another summation order than the second kernel's: rounding apart)
        assert not cnt.any()
        torch.testing.assert_close(got, triton_fn("decode_attention")(q, k, v, lens_B, **kw))
    ref32 = ref.decode_attention(q.float(), k.float(), v.float(), lens_B, **kw)
    check("decode_attention", got, ref32, ref.decode_attention(q, k, v, lens_B, **kw), dtype, fp32_atol=1e-4)
    for b, n in enumerate(lens):
        if n == 0:
            assert got[b].abs().max().item() == 0.0  # an empty row attends to nothing: zeros, not NaN


def test_decode_attention_reads_nothing_past_a_rows_length():
    q, k, v, lens_B, _ = _decode_case(torch.float32, 2, 4, 2, 16, 40, [10, 33], paged=False)
    fn = triton_fn("decode_attention")
    before = fn(q, k, v, lens_B)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 10:] = float("nan")  # stale slots of a fixed-shape cache may hold anything
    v2[1, :, 33:] = float("nan")
    torch.testing.assert_close(fn(q, k2, v2, lens_B), before)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_split_reads_nothing_past_a_rows_length(paged):
    """Several splits per row, some of them empty: NaN in every slot past a row's length (and in a whole row of
    length 0) changes nothing."""
    lens = [130, 0]
    q, k, v, lens_B, kw = _decode_case(torch.float32, 2, 4, 1, 16, 300, lens, paged)
    fn = triton_fn("decode_attention")
    before = fn(q, k, v, lens_B, **kw)
    stale = torch.ones(k.shape[:-1], dtype=torch.bool, device=DEVICE)  # (B, KVH, L) or (slots, KVH)
    for b, n in enumerate(lens):
        if paged:
            s = torch.arange(n, device=DEVICE)
            stale[kw["block_table"][b, s // kw["block_size"]].long() * kw["block_size"] + s % kw["block_size"]] = False
        else:
            stale[b, :, :n] = False
    k2, v2 = k.masked_fill(stale[..., None], float("nan")), v.masked_fill(stale[..., None], float("nan"))
    torch.testing.assert_close(fn(q, k2, v2, lens_B, **kw), before)
    assert before[1].abs().max().item() == 0.0


def test_decode_attention_split_counters_are_checked():
    """A counter buffer too small, or of another dtype, is refused by name."""
    q, k, v, lens_B, _ = _decode_case(torch.float32, 1, 4, 2, 16, 300, [250], paged=False)
    fn = triton_fn("decode_attention")
    for bad in (torch.zeros(1, dtype=torch.int32), torch.zeros(2, dtype=torch.int64)):
        with pytest.raises(ShapeError, match="split_counters should be a contiguous int32 buffer of at least"):
            fn(q, k, v, lens_B, split_counters=bad.to(DEVICE))


def test_decode_attention_num_splits():
    from kernel.triton.decode_attention import BLOCK_S, MAX_SPLITS, MIN_BLOCK_S, block_s, num_splits

    # B=1, 4 KV heads on a 132-SM H200: one split per 16-slot block up to the cap
    assert num_splits(1, 4, 384, 132) == 24 and num_splits(1, 4, 2048, 132) == MAX_SPLITS
    assert num_splits(32, 4, 2048, 132) == 2  # 128 (row, head) programs: two each give about two per SM
    assert num_splits(64, 4, 2048, 132) == 1  # rows and heads alone fill the GPU: the single-pass kernel
    assert num_splits(1, 1, 17, 8) == 2 and num_splits(1, 1, 16, 8) == 1 and num_splits(1, 1, 0, 8) == 1
    # the block: a full row's chunk in one step where it is short, else 64-slot steps
    assert block_s(384, 24) == MIN_BLOCK_S == 16 and block_s(384, 12) == 32 and block_s(384, 6) == BLOCK_S == 64
    assert block_s(2048, 32) == 64 and block_s(8192, 32) == 64 and block_s(384, 2) == 64  # batch 32's two splits
    assert block_s(100, 1) == 64 and block_s(10, 1) == 16 and block_s(0, 1) == 16 and block_s(40, 2) == 32


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_launches_its_splits_with_the_block_that_holds_their_chunk(monkeypatch, paged):
    """The batch-1 shape of the 1.1B decode (32 heads, 4 KV heads, a 384-slot cache) at 24 splits launches its
    split kernel with 16-slot blocks, at 6 splits with 64 (kernel 0.13's path), and both match the reference."""
    from kernel.triton import decode_attention as da

    launches = []
    real = da._decode

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((grid, kw["BLOCK_S"])) or real[grid](*args, **kw)

    monkeypatch.setattr(da, "_decode", Spy())
    q, k, v, lens_B, kw = _decode_case(torch.float32, 1, 32, 4, 16, 384, [300], paged, block_size=16)
    want = ref.decode_attention(q, k, v, lens_B, **kw)
    for n, block in (("24", 16), ("6", 64)):
        monkeypatch.setenv(da.SPLITS_ENV, n)
        torch.testing.assert_close(da.decode_attention(q, k, v, lens_B, **kw), want, rtol=1e-4, atol=1e-4)
        assert launches.pop() == ((1, 4, int(n)), block)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_split_count_can_be_set_for_comparisons(monkeypatch, paged):
    """$LMSTACK_DECODE_SPLITS fixes the split count (held to one split a MIN_BLOCK_S block and to MAX_SPLITS):
    every count gives the reference's result, the in-kernel combine too; a bad value is refused by name."""
    from kernel.triton import decode_attention as da

    assert da.splits(1, 4, 384, 132) == 24  # unset: num_splits
    for raw, want in (("1", 1), ("2", 2), ("3", 3), ("6", 6), ("30", 24)):
        monkeypatch.setenv(da.SPLITS_ENV, raw)
        assert da.splits(1, 4, 384, 132) == want
    for raw, want in (("1", 1), ("50", 6)):  # 90 slots: at most six blocks of 16
        monkeypatch.setenv(da.SPLITS_ENV, raw)
        assert da.splits(1, 4, 90, 132) == want
    monkeypatch.setenv(da.SPLITS_ENV, "100")
    assert da.splits(1, 4, 8192, 132) == da.MAX_SPLITS
    q, k, v, lens_B, kw = _decode_case(torch.float32, 2, 4, 2, 32, 300, [300, 130], paged)
    ref32 = ref.decode_attention(q, k, v, lens_B, **kw)
    fn = triton_fn("decode_attention")
    for n in ("1", "2", "3", "5", "10", "19"):  # blocks of 64 down to 16 (block_s(300, 19))
        monkeypatch.setenv(da.SPLITS_ENV, n)
        torch.testing.assert_close(fn(q, k, v, lens_B, **kw), ref32, rtol=1e-4, atol=1e-4)
        cnt = torch.zeros(2 * 2, dtype=torch.int32, device=DEVICE)
        torch.testing.assert_close(fn(q, k, v, lens_B, split_counters=cnt, **kw), ref32, rtol=1e-4, atol=1e-4)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(da.SPLITS_ENV, bad)
        with pytest.raises(ConfigError, match="LMSTACK_DECODE_SPLITS.*at least 1, got"):
            fn(q, k, v, lens_B, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("B, H, KVH, Dh, L, lens", [(3, 4, 2, 16, 40, [40, 1, 0]), (1, 4, 1, 32, 300, [233])])
def test_decode_attention_writes_and_rotates_the_new_token(dtype, paged, rope, B, H, KVH, Dh, L, lens):
    """k_new/v_new (and cos/sin): the kernel writes the step's token to slot lens - 1 (rotated) and attends to it,
    as the reference's rope + write + attention does; the second case splits the slots (the write is split 0's)."""
    q, k, v, lens_B, kw = _decode_case(dtype, B, H, KVH, Dh, L, lens, paged, seed=5)
    g = torch.Generator().manual_seed(6)
    k_new = torch.randn(B, KVH, Dh, generator=g).to(DEVICE, dtype)
    v_new = torch.randn(B, KVH, Dh, generator=g).to(DEVICE, dtype)
    if rope:
        ang = torch.rand(B, Dh // 2, generator=g) * 6.3
        cos, sin = torch.cat([ang.cos()] * 2, -1).to(DEVICE, dtype), torch.cat([ang.sin()] * 2, -1).to(DEVICE, dtype)
        kw = {**kw, "cos_BDh": cos, "sin_BDh": sin}
    k_ref, v_ref = k.clone(), v.clone()
    got = triton_fn("decode_attention")(q, k, v, lens_B, k_new=k_new, v_new=v_new, **kw)
    assert got.shape == (B, H, Dh) and got.dtype == dtype
    f32 = {n: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for n, t in kw.items()}
    k32, v32 = k_ref.float(), v_ref.float()
    ref32 = ref.decode_attention(q.float(), k32, v32, lens_B, k_new=k_new.float(), v_new=v_new.float(), **f32)
    lowp = ref.decode_attention(q, k_ref, v_ref, lens_B, k_new=k_new, v_new=v_new, **kw)
    check("decode_attention", got, ref32, lowp, dtype, fp32_atol=1e-4)
    # the caches: the reference's writes (same slot, same rotation up to rounding), nothing else touched
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(k.float(), k32, **tol)
    torch.testing.assert_close(v.float(), v32)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_reads_rope_tables_at_each_rows_position(paged):
    """cos_PDh/sin_PDh: the angles of row b are the tables' row lens_B[b] - 1 (its new slot), read by the kernel
    itself; the same output and cache writes as handing every implementation those rows (cos_BDh/sin_BDh)."""
    from kernel import sdpa

    B, H, KVH, Dh, L = 3, 4, 2, 16, 40
    q, k, v, lens_B, kw = _decode_case(torch.float32, B, H, KVH, Dh, L, [40, 1, 0], paged, seed=11)
    g = torch.Generator().manual_seed(12)
    k_new, v_new = torch.randn(B, KVH, Dh, generator=g).to(DEVICE), torch.randn(B, KVH, Dh, generator=g).to(DEVICE)
    P = L if not paged else kw["block_table"].shape[1] * kw["block_size"]
    ang = torch.rand(P + 3, Dh // 2, generator=g) * 6.3  # longer than the slots: allowed
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(DEVICE), torch.cat([ang.sin()] * 2, -1).to(DEVICE)
    pos = (lens_B - 1).clamp_min(0)
    for impl in (triton_fn("decode_attention"), ref.decode_attention, sdpa.decode_attention):
        k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
        want = impl(q, k1, v1, lens_B, k_new=k_new, v_new=v_new, cos_BDh=cos[pos], sin_BDh=sin[pos], **kw)
        got = impl(q, k2, v2, lens_B, k_new=k_new, v_new=v_new, cos_PDh=cos, sin_PDh=sin, **kw)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert torch.equal(k2, k1) and torch.equal(v2, v1)
    fn = triton_fn("decode_attention")
    for bad, why in (({"cos_PDh": cos[:P - 1], "sin_PDh": sin[:P - 1]}, f"P >= {P}"),
                     ({"cos_PDh": cos}, "go together"),
                     ({"cos_PDh": cos, "sin_PDh": sin, "cos_BDh": cos[pos], "sin_BDh": sin[pos]}, "not both"),
                     ({"cos_PDh": cos[:, :8], "sin_PDh": sin[:, :8]}, "Dh=16")):
        for impl in (fn, ref.decode_attention):
            with pytest.raises(ShapeError, match=why):
                impl(q, k.clone(), v.clone(), lens_B, k_new=k_new, v_new=v_new, **bad, **kw)


def test_decode_attention_new_token_beats_stale_slot_contents():
    """The step's own key is read from k_new, not from its slot, whatever the slot held before (NaN here)."""
    q, k, v, lens_B, _ = _decode_case(torch.float32, 2, 4, 2, 16, 30, [7, 30], paged=False, seed=8)
    g = torch.Generator().manual_seed(9)
    k_new, v_new = torch.randn(2, 2, 16, generator=g).to(DEVICE), torch.randn(2, 2, 16, generator=g).to(DEVICE)
    want = ref.decode_attention(q, k.clone(), v.clone(), lens_B, k_new=k_new, v_new=v_new)
    k[0, :, 6], v[1, :, 29] = float("nan"), float("nan")
    got = triton_fn("decode_attention")(q, k, v, lens_B, k_new=k_new, v_new=v_new)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(k[0, :, 6], k_new[0])  # and the slot now holds it


def test_decode_attention_new_token_arguments_are_checked():
    q, k, v, lens_B, _ = _decode_case(torch.float32, 1, 4, 2, 16, 10, [3], paged=False)
    fn = triton_fn("decode_attention")
    with pytest.raises(ShapeError, match="k_new and v_new go together"):
        fn(q, k, v, lens_B, k_new=torch.zeros(1, 2, 16, device=DEVICE))
    with pytest.raises(ShapeError, match=r"v_new should be \(B, KVH, Dh\)"):
        fn(q, k, v, lens_B, k_new=torch.zeros(1, 2, 16, device=DEVICE), v_new=torch.zeros(1, 4, 16, device=DEVICE))


def test_decode_attention_equals_full_attention_over_the_valid_slots():
    """Independent of the decode reference: softmax over the first n keys is plain attention on a prefix."""
    q, k, v, lens_B, _ = _decode_case(torch.float32, 1, 4, 2, 16, 50, [37], paged=False, seed=3)
    got = triton_fn("decode_attention")(q, k, v, lens_B)
    kk = k[:, :, :37].repeat_interleave(2, dim=1)
    vv = v[:, :, :37].repeat_interleave(2, dim=1)
    want = torch.softmax((q[:, :, None] @ kk.transpose(-1, -2)) / 16 ** 0.5, -1) @ vv
    torch.testing.assert_close(got, want[:, :, 0], atol=1e-5, rtol=1e-5)
