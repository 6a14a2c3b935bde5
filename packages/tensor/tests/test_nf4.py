"""NF4 against bitsandbytes' own quantize_4bit / dequantize_4bit (on the CPU): the same bytes, absmaxes and
dequantized weights. Under double quantization the 8-bit absmax codes are the nearest levels of the dynamic map
here, where bitsandbytes' CPU library searches the map its own way (up to two levels off for ~0.3% of blocks, its
CUDA kernel and pure-torch backend differ again): there the scales and offset are equal and the codes close."""

import warnings

import pytest
import torch

from specs.errors import ConfigError, ShapeError
from tensor.nf4 import KEYS, NF4_CODE, absmax_of, dequantize_nf4, dequantize_state, dynamic_map, quantize_nf4

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitsandbytes.functional as bnbf


@pytest.mark.parametrize("shape", [(64, 128), (96, 40), (7, 9), (300, 257)])  # partial blocks, an odd count
@pytest.mark.parametrize("double_quant", [False, True])
def test_the_bytes_and_weights_are_bitsandbytes(shape, double_quant):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) * 0.05
    w[0, 0] = 0.0  # a zero and a block's own absmax are exact
    ours = quantize_nf4(w, double_quant=double_quant)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    assert torch.equal(ours["nf4_data"], packed.reshape(-1))
    assert torch.equal(torch.tensor(NF4_CODE), state.code)
    theirs = bnbf.dequantize_4bit(packed, state)
    if double_quant:
        assert torch.equal(ours["nf4_absmax_offset"], state.offset.reshape(1))
        assert torch.equal(torch.tensor(dynamic_map()), state.state2.code)
        exact = absmax_of(quantize_nf4(w, double_quant=False))
        if exact.numel() > 1:  # (one block: bitsandbytes stores a zero scale for the all-zero difference)
            assert torch.equal(ours["nf4_absmax_scale"], state.state2.absmax)
            codes = ours["nf4_absmax"].int()
            assert (codes - state.absmax.int()).abs().max() <= 2 and (codes != state.absmax.int()).float().mean() < 0.01
        step = torch.diff(torch.tensor(dynamic_map())).max() * ours["nf4_absmax_scale"].max()
        assert (absmax_of(ours) - exact).abs().max() <= step / 2 + 1e-7  # ours: the nearest level
        torch.testing.assert_close(dequantize_nf4(ours), theirs, rtol=0, atol=2 * float(step))  # their codes: <= 2 off
    else:
        assert torch.equal(ours["nf4_absmax"], state.absmax)
        torch.testing.assert_close(dequantize_nf4(ours), theirs, rtol=0, atol=1e-7)
    assert dequantize_nf4(ours, torch.bfloat16).dtype == torch.bfloat16


def test_error_is_within_half_a_level_of_each_blocks_absmax():
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    q = quantize_nf4(w, double_quant=False)
    err = (dequantize_nf4(q) - w).abs().reshape(-1, 64)
    gap = max(b - a for a, b in zip(NF4_CODE, NF4_CODE[1:]))
    assert (err <= w.reshape(-1, 64).abs().amax(1, keepdim=True) * gap / 2 + 1e-6).all()
    # double quantization moves each absmax by less than half a step of its 8-bit code: the weights by ~1%
    dq = absmax_of(quantize_nf4(w))
    torch.testing.assert_close(dq, q["nf4_absmax"], rtol=0.02, atol=0)
    sizes = {k: v.numel() * v.element_size() for k, v in quantize_nf4(w).items()}
    assert sizes["nf4_data"] == w.numel() // 2 and sizes["nf4_absmax"] == w.numel() // 64  # 4.125 bits a weight


def test_dequantize_state_turns_groups_into_weights():
    w = torch.randn(32, 64)
    state = {f"layer.base_layer.{k}": v for k, v in quantize_nf4(w).items()} | {"layer.bias": torch.ones(32)}
    out = dequantize_state(state)
    assert sorted(out) == ["layer.base_layer.weight", "layer.bias"]
    assert torch.equal(out["layer.base_layer.weight"], dequantize_nf4(quantize_nf4(w)))
    assert dequantize_state({"a.weight": w}) == {"a.weight": w}


def test_bad_input_is_refused_by_name():
    with pytest.raises(ShapeError, match="inf or NaN"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ShapeError, match="non-empty float tensor, got torch.int64"):
        quantize_nf4(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="even int >= 2"):
        quantize_nf4(torch.ones(4), blocksize=3)
    q = quantize_nf4(torch.randn(8, 8))
    with pytest.raises(ShapeError, match="needs nf4_shape"):
        dequantize_nf4({k: v for k, v in q.items() if k != "nf4_shape"})
    with pytest.raises(ShapeError, match="holds 32 bytes; got 31"):
        dequantize_nf4({**q, "nf4_data": q["nf4_data"][:-1]})


@pytest.mark.parametrize("double_quant", [False, True])
def test_a_bitsandbytes_checkpoints_weights_read_as_these_bytes(double_quant):
    """A Linear as bitsandbytes' Linear4bit saves it (QuantState.as_dict(packed=True), the keys of a "-bnb-4bit"
    repository): the same bytes, and bitsandbytes' own dequantized weight."""
    from tensor.nf4 import from_bitsandbytes

    w = (torch.randn(96, 320, generator=torch.Generator().manual_seed(5)) * 0.05).bfloat16()
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    state = {"m.q.weight": packed, **{f"m.q.weight.{k}": v for k, v in qs.as_dict(packed=True).items()},
             "m.norm.weight": torch.ones(320)}
    ours, dtypes = from_bitsandbytes(state)
    assert dtypes == {"m.q": torch.bfloat16} and "m.norm.weight" in ours
    assert sorted(k for k in ours if k.startswith("m.q.")) == sorted(
        f"m.q.{k}" for k in KEYS if double_quant or "absmax_" not in k)
    assert torch.equal(ours["m.q.nf4_data"], packed.reshape(-1))
    got = dequantize_state(ours, torch.bfloat16)["m.q.weight"]  # bitsandbytes returns the saved dtype
    torch.testing.assert_close(got, bnbf.dequantize_4bit(packed, qs), rtol=0, atol=0)
    # the bytes stored as bf16 (bitsandbytes' quant_storage, as FSDP-QLoRA checkpoints hold them): the same bytes
    wide, wqs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant,
                                   quant_storage=torch.bfloat16)
    again, _ = from_bitsandbytes({"m.q.weight": wide, **{f"m.q.weight.{k}": v for k, v in
                                                         wqs.as_dict(packed=True).items()}})
    assert wide.dtype == torch.bfloat16 and torch.equal(again["m.q.nf4_data"], packed.reshape(-1))
    fp4, fqs = bnbf.quantize_4bit(w, blocksize=64, quant_type="fp4")
    with pytest.raises(ShapeError, match="m.f: a bitsandbytes fp4 weight; only NF4"):
        from_bitsandbytes({"m.f.weight": fp4, **{f"m.f.weight.{k}": v for k, v in fqs.as_dict(packed=True).items()}})
    broken = {**state, "m.q.weight.quant_state.bitsandbytes__nf4": torch.tensor(list(b"{not json"), dtype=torch.uint8)}
    with pytest.raises(ShapeError, match="m.q: its bitsandbytes quant state .* is not the JSON bitsandbytes writes"):
        from_bitsandbytes(broken)
    del state["m.q.weight.absmax"]
    with pytest.raises(ShapeError, match="m.q: a bitsandbytes 4-bit weight without m.q.weight.absmax"):
        from_bitsandbytes(state)
