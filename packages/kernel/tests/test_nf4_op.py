"""The ``nf4_dequantize`` op: the Triton kernel against the reference (tensor.nf4's definition, whose bytes are
bitsandbytes'), with and without double quantization, partial blocks and odd value counts, every output dtype."""

from __future__ import annotations

import pytest
import torch

from kernel import nf4 as ref
from specs.errors import ShapeError
from tensor.nf4 import quantize_nf4

triton = pytest.importorskip("triton")

from triton_testing import DEVICE, DTYPES, INTERPRETED, rand, triton_fn  # noqa: E402


def _args(q):
    return q["nf4_data"], q["nf4_absmax"], q.get("nf4_absmax_scale"), q.get("nf4_absmax_offset")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "double"), [((96, 80), True), ((67, 65), True), ((300, 3), False), ((5, 7), False)])
def test_the_kernel_is_the_reference(shape, double, dtype):
    w = rand(*shape, dtype=torch.float32, seed=shape[0]) * 0.05
    q = quantize_nf4(w, double_quant=double)
    want = ref.nf4_dequantize(*_args(q), shape, torch.float32)
    got = triton_fn("nf4_dequantize")(*_args(q), shape, dtype)
    assert got.dtype == dtype and got.shape == shape and got.device.type == DEVICE
    if INTERPRETED and dtype == torch.bfloat16:  # the interpreter converts to bf16 by truncation: an ulp
        torch.testing.assert_close(got, want.to(dtype), rtol=2 ** -7, atol=0)
    elif double and dtype == torch.float32:  # the GPU fuses the absmax's code * scale + offset (one rounding less)
        torch.testing.assert_close(got, want, rtol=2 ** -21, atol=0)
    else:
        assert torch.equal(got, want.to(dtype))  # one fp32 product a value, rounded once: exact
    assert (want - w).abs().max() < 0.05 * 0.5


def test_inconsistent_arguments_are_refused():
    q = quantize_nf4(torch.randn(64, 8, device=DEVICE))
    data, absmax, scale, offset = _args(q)
    for fn in (ref.nf4_dequantize, triton_fn("nf4_dequantize")):
        with pytest.raises(ShapeError, match="256 uint8 bytes for shape \\(64, 9\\)|288 uint8 bytes"):
            fn(data, absmax, scale, offset, (64, 9))
        with pytest.raises(ShapeError, match="need absmax_scale"):
            fn(data, absmax, None, None, (64, 8))
        with pytest.raises(ShapeError, match="512 values in blocks of 64 need 8 absmaxes, got 3"):
            fn(data, absmax[:3], scale, offset, (64, 8))
        with pytest.raises(ShapeError, match="blocksize must be an even int"):
            fn(data, absmax, scale, offset, (64, 8), torch.float32, 63)
