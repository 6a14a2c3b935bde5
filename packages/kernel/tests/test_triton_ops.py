"""Triton kernels against the references: forward and backward, fp32 / fp16 / bf16, small shapes.

On a CPU-only machine they run under Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py); with CUDA they
run on the GPU. Low-precision tolerance: the kernel's error against the fp32 reference is at most ``factor`` times
the error of the same op computed by torch in the low dtype (2x; 4x for bf16 under the interpreter, which rounds
by truncation, see test_interpreter_bf16_conversion_truncates).
"""

from __future__ import annotations

import os

import pytest
import torch

from kernel import default_registry
from kernel import reference as ref
from tensor.rope import rope_cos_sin, rope_inv_freq

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and DEVICE == "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def factor(dtype):
    return 4.0 if (INTERPRETED and dtype == torch.bfloat16) else 2.0


def triton_fn(op):
    return default_registry().get(op, "triton").load()


def check(name, got, ref32, lowp, dtype, fp32_atol=1e-5):
    """got/lowp: results in ``dtype``; ref32: the fp32 reference on the same (rounded) inputs."""
    err = (got.float() - ref32).abs().max().item()
    if dtype == torch.float32:
        assert err <= fp32_atol, f"{name}: {err:.2e}"
    else:
        base = (lowp.float() - ref32).abs().max().item()
        assert err <= factor(dtype) * base + 1e-6, f"{name} {dtype}: {err:.2e} vs torch {base:.2e}"


def grads(fn, inputs, g):
    ins = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*ins)
    return out, torch.autograd.grad(out, ins, g.to(out.dtype))


def rand(*shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


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
    assert reg.select("int8_linear", "auto", device="cuda", dtype=torch.bfloat16, capability=(9, 0)).name == "triton"
    assert reg.select("int8_linear", "auto", device="cuda", dtype=torch.bfloat16, capability=(9, 0),
                      backward=True).name == "reference"


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
@pytest.mark.parametrize("B, H, KVH, Dh, L, lens", [(3, 8, 2, 32, 150, [150, 1, 77]), (2, 4, 4, 24, 20, [0, 13]),
                                                    (1, 6, 1, 64, 9, [9])])
def test_decode_attention_matches_reference(dtype, paged, B, H, KVH, Dh, L, lens):
    q, k, v, lens_B, kw = _decode_case(dtype, B, H, KVH, Dh, L, lens, paged)
    got = triton_fn("decode_attention")(q, k, v, lens_B, **kw)
    assert got.shape == (B, H, Dh) and got.dtype == dtype
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


def test_decode_attention_equals_full_attention_over_the_valid_slots():
    """Independent of the decode reference: softmax over the first n keys is plain attention on a prefix."""
    q, k, v, lens_B, _ = _decode_case(torch.float32, 1, 4, 2, 16, 50, [37], paged=False, seed=3)
    got = triton_fn("decode_attention")(q, k, v, lens_B)
    kk = k[:, :, :37].repeat_interleave(2, dim=1)
    vv = v[:, :, :37].repeat_interleave(2, dim=1)
    want = torch.softmax((q[:, :, None] @ kk.transpose(-1, -2)) / 16 ** 0.5, -1) @ vv
    torch.testing.assert_close(got, want[:, :, 0], atol=1e-5, rtol=1e-5)


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
def test_skinny_int8_linear_matches_reference(dtype, M, N, K, with_bias):
    g = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    s = (torch.rand(N, generator=g) / 127 / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if with_bias else None
    got = skinny_fn("int8_linear")(x, w, s, b)
    ref32 = ref.int8_linear(x.float(), w, s.float(), None if b is None else b.float())
    check("int8_linear", got, ref32, ref.int8_linear(x, w, s, b), dtype, fp32_atol=1e-4)


def test_skinny_tiles_split_k_until_every_sm_has_work():
    from kernel.triton.skinny import tiles

    assert tiles(2048, 2048, 2, 132) == (32, 128, 8, 4)  # 64 column tiles x 8 splits of 2 K tiles: 512 programs
    assert tiles(11264, 2048, 2, 132)[2] == 1  # 352 column tiles fill 132 SMs alone
    assert tiles(48, 300, 2, 132)[2] == 1  # too little K to split
    assert tiles(2048, 5632, 1, 132)[:2] == (32, 256)  # int8: 256-byte rows of K per stage as well
