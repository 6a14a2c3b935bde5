"""The ``lora`` op (many adapters a batch, each row its own): the Triton kernels and the dense form against a loop
over the rows with each row's own adapter, in fp32 and low precision, fused layouts, rows without an adapter."""

from __future__ import annotations

import pytest
import torch

from kernel import lora as ref
from specs.errors import ShapeError

triton = pytest.importorskip("triton")

from triton_testing import DEVICE, DTYPES, check, rand, triton_fn  # noqa: E402


def _setup(S, bounds, R, I, B, T, dtype):
    """Random adapters in the op's layout (B zero outside each part's columns), rows (some with no adapter: S)."""
    P, O = len(bounds) - 1, bounds[-1]
    a = rand(S * P * R, I, dtype=dtype, seed=1) * 0.3
    b = torch.zeros(S * P * R, O, dtype=dtype, device=DEVICE)
    full = rand(S * P * R, O, dtype=dtype, seed=2) * 0.3
    for s in range(S):
        for p in range(P):
            w = slice((s * P + p) * R, (s * P + p + 1) * R)
            b[w, bounds[p]:bounds[p + 1]] = full[w, bounds[p]:bounds[p + 1]]
    rows = torch.tensor([(i * 5) % (S + 1) for i in range(B)], device=DEVICE)  # every slot and "none"
    scales = torch.linspace(0.5, 2.0, S, device=DEVICE)
    x = rand(B * T, I, dtype=dtype, seed=3)
    y = rand(B * T, O, dtype=dtype, seed=4)
    return y, x, a, b, rows, scales


def _loop(y, x, a, b, rows, scales, bounds):
    """The definition, row by row in fp32: y[n, part p] += scale * (x[n] @ A[s, p].T) @ B[s, p]."""
    S, P = scales.numel(), len(bounds) - 1
    R, T = a.shape[0] // (S * P), x.shape[0] // rows.numel()
    out = y.float().clone()
    for n in range(x.shape[0]):
        s = int(rows[n // T])
        if s == S:
            continue
        for p in range(P):
            w = slice((s * P + p) * R, (s * P + p + 1) * R)
            out[n] += float(scales[s]) * (x[n].float() @ a[w].float().T) @ b[w].float()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [((0, 48), 8, 1), ((0, 64, 80, 96), 12, 3)])  # plain; q/k/v at rank 12
def test_lora_kernels_match_the_definition(dtype, layout):
    bounds, R, T = layout
    S, B, I = 3, 7, 72
    args = _setup(S, bounds, R, I, B, T, dtype)
    want = _loop(*args, bounds)
    lowp = args[0].clone()
    ref.lora_dense(lowp, *args[1:], bounds, dtype=dtype)
    for name, fn in (("triton", triton_fn("lora")), ("reference", ref.lora)):
        y = args[0].clone()
        out = fn(y, *args[1:], bounds)
        assert out is y  # in place
        check(f"lora {name}", y, want, lowp, dtype, fp32_atol=1e-4)
    none = args[4] == S  # rows without an adapter are left exactly as they were
    untouched = none.repeat_interleave(T)
    y = args[0].clone()
    triton_fn("lora")(y, *args[1:], bounds)
    assert torch.equal(y[untouched], args[0][untouched])


def test_lora_past_the_kernel_rows_takes_the_dense_form():
    from kernel.triton import lora as tl_lora

    bounds = (0, 32)
    args = _setup(2, bounds, 4, 24, tl_lora.KERNEL_ROWS // 4 + 1, 4, torch.float32)  # 20 tokens
    y = args[0].clone()
    triton_fn("lora")(y, *args[1:], bounds)
    torch.testing.assert_close(y, _loop(*args, bounds), rtol=1e-4, atol=1e-4)


def test_lora_refuses_inconsistent_layouts():
    y, x, a, b, rows, scales = _setup(2, (0, 16), 4, 8, 3, 1, torch.float32)
    with pytest.raises(ShapeError, match="bounds"):
        ref.lora(y, x, a, b, rows, scales, (0, 8))
    with pytest.raises(ShapeError, match="S=3 slots and P=1 parts"):
        ref.lora(y, x, a, b, rows, torch.ones(3, device=DEVICE), (0, 16))
    mask = ref.lora_mask(rows, scales, 1, 4, torch.float32)  # a mask given is what the op builds
    torch.testing.assert_close(ref.lora(y.clone(), x, a, b, rows, scales, (0, 16), mask=mask),
                               ref.lora(y.clone(), x, a, b, rows, scales, (0, 16)), rtol=0, atol=0)
    assert (mask[rows == 2] == 0).all() and mask.shape == (3, 8)
    with pytest.raises(ShapeError, match="rows"):
        ref.lora(y, x, a, b, rows[:2], scales, (0, 16))
