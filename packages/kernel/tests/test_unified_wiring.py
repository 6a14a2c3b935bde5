"""The unified decode attention as a decode step calls it (kernel 0.23): the registry's ``decode_attention_unified``
op (torch reference; the Triton kernel as an opaque op, its fake shapes), and the ``linear`` ops taking ``att=``
(the accumulators read by the gemv where the card's table has the shape, its ``att`` entry first, the attention
output materialised elsewhere), each against the reference of the materialised attention output."""

from __future__ import annotations

import json

import pytest
import torch

from kernel import reference, resolve
from specs.errors import ShapeError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H, KVH, Dh, L = 8, 2, 16, 64


def _step(lens, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)
    B = len(lens)
    # (the angle tables in the model's dtype, as a model gives them)
    kw = dict(k_new=r(B, KVH, Dh), v_new=r(B, KVH, Dh), cos_PDh=r(L, Dh), sin_PDh=r(L, Dh))
    return r(B, H, Dh), r(B, KVH, L, Dh), r(B, KVH, L, Dh), torch.tensor(lens, device=DEVICE), kw


def test_the_reference_leaves_the_attention_output_in_the_workspace():
    """The torch reference writes the cache as decode_attention does, leaves ws[layer] holding the output with sums
    of 1 and no flag (UnifiedParts.output() is decode_attention's output exactly), and zeroes the next layer's
    slot; a one-layer workspace and a bad layer are refused."""
    q, k, v, lens, kw = _step([5, 40])
    k2, v2 = k.clone(), v.clone()
    want = reference.decode_attention(q, k, v, lens, **kw)
    ws = reference.unified_workspace(3, 2, H, Dh, DEVICE)
    ws[0] = 5.0  # the next layer's slot, left over from its last use
    parts = reference.decode_attention_unified(q, k2, v2, lens, ws=ws, layer=2, **kw)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    assert parts.x.data_ptr() == ws[2].data_ptr() and parts.dtype == want.dtype
    assert torch.equal(parts.output(), want.reshape(2, H * Dh))
    assert torch.all(ws[2, :, H * Dh:H * Dh + H] == 1) and not ws[2, :, H * Dh + H:].any() and not ws[0].any()
    with pytest.raises(ShapeError, match="at least 2 layers, got 1"):
        reference.unified_workspace(1, 2, H, Dh)
    with pytest.raises(ShapeError, match="layer 3 is outside the workspace's 3 layers"):
        reference.decode_attention_unified(q, k, v, lens, ws=ws, layer=3, **kw)


def test_the_reference_linears_read_the_attention_output_and_refuse_the_rest():
    q, k, v, lens, kw = _step([30])
    ws = reference.unified_workspace(2, 1, H, Dh, DEVICE)
    parts = reference.decode_attention_unified(q, k, v, lens, ws=ws, layer=0, **kw)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, H * Dh, generator=g).to(DEVICE, torch.bfloat16)
    res = torch.randn(1, 12, generator=g).to(DEVICE, torch.bfloat16)
    x = parts.output()
    assert torch.equal(reference.linear(parts.x, w, att=parts, residual=res), reference.linear(x, w, residual=res))
    w8, s = torch.randint(-127, 128, (12, H * Dh), generator=g, dtype=torch.int8).to(DEVICE), torch.rand(12).to(DEVICE)
    assert torch.equal(reference.int8_linear(parts.x, w8, s, att=parts), reference.int8_linear(x, w8, s))
    with pytest.raises(ShapeError, match=r"with att, x is the attention's accumulators row att.x \(1, 144\)"):
        reference.linear(x, w, att=parts)
    with pytest.raises(ShapeError, match="no rms_eps or glu"):
        reference.linear(parts.x, w, att=parts, rms_eps=1e-5)


triton = pytest.importorskip("triton")

from kernel.triton import decode_attention as da  # noqa: E402  (needs triton)
from kernel.triton import gemv as gemv_mod  # noqa: E402
from kernel.triton import skinny  # noqa: E402


def test_the_opaque_op_is_the_kernel_and_its_fake_has_its_shapes():
    """decode_attention_unified_op (the registry's triton and triton_pdl) through torch.ops.lmstack: the kernel's
    accumulators and cache writes; the fake (torch.compile's shape pass) gives the partials' shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, lens, kw = _step([1, 50], seed=3)
    k2, v2 = k.clone(), v.clone()
    ws_a, ws_b = (reference.unified_workspace(2, 2, H, Dh, DEVICE) for _ in range(2))
    direct = da.decode_attention_unified(q, k, v, lens, ws=ws_a, layer=1, **kw)
    assert resolve("decode_attention_unified", "reference") is reference.decode_attention_unified
    parts = da.decode_attention_unified_op(q, k2, v2, lens, ws=ws_b, layer=1, **kw)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    torch.testing.assert_close(parts.output(), direct.output(), rtol=1e-2, atol=1e-2)  # (atomics' order)
    torch.testing.assert_close(parts.output().float(), reference.decode_attention(q, k, v, lens, **kw)
                               .reshape(2, H * Dh).float(), rtol=2e-2, atol=2e-2)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fq, fk, fv, fl, fws = (mode.from_tensor(t) for t in (q, k, v, lens, ws_b))
        fkw = {n: mode.from_tensor(t) for n, t in kw.items()}
        fake = da.decode_attention_unified_op(fq, fk, fv, fl, ws=fws, layer=0, **fkw)
        shapes = [(tuple(t.shape), t.dtype) for t in fake[1:4]]
    assert shapes == [(tuple(t.shape), t.dtype) for t in parts[1:4]]


@pytest.mark.parametrize("weight", ["bf16", "int8"])
@pytest.mark.parametrize("table", ["att", "plain", "none"])
def test_the_linear_ops_take_att(tmp_path, monkeypatch, weight, table):
    """skinny's linear / int8_linear (and their PDL twins) given att: the gemv reads the accumulators where the
    table has the weight's shape (its "att" entry before the plain one), else the output is materialised; the
    projection of the attention output plus the residual either way."""
    card = gemv_mod.device_info(torch.empty(1, device=DEVICE))[1]
    q, k, v, lens, kw = _step([33], seed=5)
    ws = reference.unified_workspace(2, 1, H, Dh, DEVICE)
    parts = da.decode_attention_unified(q, k, v, lens, ws=ws, layer=0, **kw)
    g = torch.Generator().manual_seed(6)
    N = 32
    res = torch.randn(1, 1, N, generator=g).to(DEVICE, torch.bfloat16)
    x = parts.output()
    if weight == "int8":
        w = torch.randint(-127, 128, (N, H * Dh), generator=g, dtype=torch.int8).to(DEVICE)
        s = (torch.rand(N, generator=g) / 100).to(DEVICE, torch.bfloat16)
        want = reference.int8_linear(x, w, s, residual=res.view(1, N))
        ops = [lambda **a: skinny.int8_linear(parts.x, w, s, **a),
               lambda **a: skinny.int8_linear_pdl(parts.x, w, s, **a)]
    else:
        w, s = torch.randn(N, H * Dh, generator=g).to(DEVICE, torch.bfloat16), None
        want = reference.linear(x, w, residual=res.view(1, N))
        ops = [lambda **a: skinny.linear(parts.x, w, **a), lambda **a: skinny.linear_pdl(parts.x, w, **a)]
    key = gemv_mod.tile_key(N, H * Dh, w.dtype)
    entries = {"att": {f"{key} att": [4, 128, 4, 1], key: [2, 64, 1, 1]}, "plain": {key: [8, 64, 2, 1]},
               "none": {}}[table]
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({card: entries}))
    monkeypatch.setenv(gemv_mod.TILES_ENV, str(path))
    assert skinny._gemv_tiles(parts.x, w, False, att=True)[:3] == {"att": (4, 128, 4), "plain": (8, 64, 2),
                                                                    "none": ()}[table]
    seen = []
    real = gemv_mod.gemv
    monkeypatch.setattr(skinny, "gemv", lambda *a, **kw_: seen.append(kw_.get("att") is not None) or real(*a, **kw_))
    for op in ops:
        got = op(residual=res, att=parts)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    if table != "none":
        assert seen and all(seen)  # the plain gemv read the accumulators (the PDL op's own gemv is not seen here)
    else:
        assert not any(seen)
