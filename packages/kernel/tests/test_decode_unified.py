"""Decode attention with one softmax shift for all slot splits of a head (``decode_attention_unified``) and the
output projection reading its accumulators (``gemv(att=...)``): no combine kernel between them. Checked against
the plain kernels and the reference, over rows whose shift is good (the sums) and a row whose split passes it by
far (flagged: the partials combined instead), with the next layer's accumulators zeroed; bad workspaces refused."""

from __future__ import annotations

import pytest
import torch

from kernel import reference
from specs.errors import ConfigError, ShapeError

triton = pytest.importorskip("triton")

from kernel.triton import decode_attention as da  # noqa: E402  (needs triton)
from kernel.triton import decode_unified as du  # noqa: E402
from kernel.triton import gemv as gemv_mod  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _step(B, lens, H=8, KVH=2, L=64, Dh=16, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)
    kw = dict(k_new=r(B, KVH, Dh), v_new=r(B, KVH, Dh), cos_PDh=r(L, Dh).float(), sin_PDh=r(L, Dh).float())
    return r(B, H, Dh), r(B, KVH, L, Dh), r(B, KVH, L, Dh), torch.tensor(lens, device=DEVICE), kw


def _unified(q, k, v, lens, kw, layers=3, layer=1):
    B, H, Dh = q.shape
    ws = du.unified_workspace(layers, B, H, Dh, DEVICE)
    ws[(layer + 1) % layers] = 7.0  # the next layer's accumulators, left over from its last use
    parts = da.decode_attention_unified(q, k, v, lens, ws=ws, layer=layer, **kw)
    return ws, parts


@pytest.mark.parametrize("atomics", ["", "scalar"])
@pytest.mark.parametrize("lens", [[1], [2], [37], [64], [5, 64]])
def test_the_accumulators_give_the_attention_output(monkeypatch, lens, atomics):
    """Each row's outputs over its sums are the plain kernels' attention (the splits' rows of 1 to 64 slots, the
    new token alone at length 1), and the cache gets the same new key and value; the call zeroes the next layer's
    accumulators and sets no flag. The outputs added as one flat run (four values an atomic on a GPU) or, under
    ``$LMSTACK_UNIFIED_TIMING=scalar``, as the (heads, Dh) block."""
    monkeypatch.setenv(du.UNIFIED_TIMING_ENV, atomics)
    q, k, v, lens_B, kw = _step(len(lens), lens)
    k2, v2 = k.clone(), v.clone()
    want = da.decode_attention(q, k, v, lens_B, **kw)
    assert da.splits(len(lens), 2, 64, da.device_info(q)[0]) > 1  # several splits add to one accumulator
    ws, parts = _unified(q, k2, v2, lens_B, kw)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    B, H, Dh = q.shape
    assert not parts.x[:, H * Dh + H].any()
    got = reference.unified_output(parts.x, parts.acc, parts.m, parts.l, q.dtype).view(B, H, Dh)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    assert not ws[2, :, :H * Dh + H + 1].any()  # outputs, sums and flag (the padding past them is unused)


def test_a_split_far_past_the_shift_flags_its_row_and_the_partials_are_combined():
    """The shift is the larger of the new token's own score and slot 0's; a cached key far along q (a score ~100
    nats above them) makes its split flag the row, and the projection then combines the partials: still the
    attention output."""
    q, k, v, lens_B, kw = _step(1, [50], seed=4)
    k[0, 0, 33] = (q[0, 0].float() * 40).to(k.dtype)  # head 0 (of KV head 0) scores this slot ~40 x |q|^2 / 4
    want = da.decode_attention(q, k.clone(), v.clone(), lens_B, **kw)
    ws, parts = _unified(q, k, v, lens_B, kw, layers=2, layer=0)
    H, Dh = q.shape[1:]
    assert parts.x[0, H * Dh + H] == 1
    got = reference.unified_output(parts.x, parts.acc, parts.m, parts.l, q.dtype).view(1, H, Dh)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    assert not ws[1, :, :H * Dh + H + 1].any()


@pytest.mark.parametrize("weight", ["bf16", "int8"])
@pytest.mark.parametrize("flagged", [False, True])
@pytest.mark.parametrize("config", [(4, 128, 4), (8, 64, 2)])  # one K step, two
@pytest.mark.parametrize("wvec", ["x", "att-wide"])
def test_the_projection_reads_the_accumulators(monkeypatch, weight, flagged, config, wvec):
    """gemv(att=...) over the accumulators is the projection of the attention output (plus the residual), the
    flag's partials path too (set by hand here, over outputs made NaN so only that path gives the answer), bf16 and
    int8 weights, one and two K steps, the weights loaded in x's layout or 16 bytes a vector ($LMSTACK_GEMV_WVEC)."""
    monkeypatch.setenv(gemv_mod.WVEC_ENV, wvec)
    q, k, v, lens_B, kw = _step(1, [45], seed=2)
    ws, parts = _unified(q, k, v, lens_B, kw, layers=3, layer=2)  # the last layer zeroes the first's
    H, Dh = q.shape[1:]
    x = reference.unified_output(parts.x, parts.acc, parts.m, parts.l, q.dtype)  # (1, H x Dh)
    sums = parts.x[0, H * Dh:H * Dh + H].clone()
    if flagged:  # the flag, and outputs only the partials' path can get right
        parts.x[0, H * Dh + H] = 1.0
        parts.x[0, :H * Dh] = float("nan")
    g = torch.Generator().manual_seed(5)
    N = 24
    res = torch.randn(1, N, generator=g).to(DEVICE, torch.bfloat16)
    if weight == "int8":
        w = torch.randint(-127, 128, (N, H * Dh), generator=g, dtype=torch.int8).to(DEVICE)
        s = (torch.rand(N, generator=g) / 100).to(DEVICE, torch.bfloat16)
        want = reference.int8_linear(x, w, s, None, residual=res)
    else:
        w, s = torch.randn(N, H * Dh, generator=g).to(DEVICE, torch.bfloat16), None
        want = reference.linear(x, w, None, residual=res)
    got = gemv_mod.gemv(parts.x, w, s, config=config, residual=res, out_dtype=torch.bfloat16,
                        att=(parts.acc, parts.m, parts.l))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    # the partials' path writes the combined outputs over the row with every sum 1; else the row is only read
    want_sums = torch.ones_like(sums) if flagged else sums
    assert torch.equal(parts.x[0, H * Dh:H * Dh + H], want_sums)
    assert not ws[0, :, :H * Dh + H + 1].any()


def test_bad_workspaces_and_calls_are_refused(monkeypatch):
    q, k, v, lens_B, kw = _step(1, [9])
    H, Dh = q.shape[1:]
    monkeypatch.setenv(du.UNIFIED_TIMING_ENV, "vector")
    with pytest.raises(ConfigError, match="LMSTACK_UNIFIED_TIMING.*'scalar'.*got 'vector'"):
        du.unified_mode(True)
    monkeypatch.setenv(du.UNIFIED_TIMING_ENV, "noatomics")  # wrong sums are no deployment's option
    with pytest.raises(ConfigError, match="got 'noatomics'"):
        du.unified_mode(True)
    monkeypatch.setenv(du.UNIFIED_TIMING_ENV, "")
    with du.timing_without_atomics():  # a benchmark's only way to them
        assert du.unified_mode(True) == 3
    assert du.unified_mode(True) == 2 and du.unified_mode(False) == 1
    monkeypatch.delenv(du.UNIFIED_TIMING_ENV)
    with pytest.raises(ShapeError, match="at least 2 layers"):
        du.unified_workspace(1, 1, H, Dh, DEVICE)
    ws = du.unified_workspace(2, 1, H, Dh, DEVICE)
    with pytest.raises(ShapeError, match=r"ws should be a contiguous fp32 \(layers >= 2, 1, 144\)"):
        da.decode_attention_unified(q, k, v, lens_B, ws=ws[:, :, :-4], layer=0, **kw)
    with pytest.raises(ShapeError, match="layer 2 is outside the workspace's 2 layers"):
        da.decode_attention_unified(q, k, v, lens_B, ws=ws, layer=2, **kw)
    table = torch.zeros(1, 4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ShapeError, match="needs the step's new token .* not a paged pool"):
        da._launch(q, k.view(-1, 2, Dh)[:64], v.view(-1, 2, Dh)[:64], lens_B, table, 16, None, kw["k_new"],
                   kw["v_new"], None, None, None, False, kw["cos_PDh"], kw["sin_PDh"], ws=ws, layer=0)
    parts = da.decode_attention_unified(q, k, v, lens_B, ws=ws, layer=0, **kw)
    w = torch.zeros(8, H * Dh, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ShapeError, match="att takes out_dtype"):
        gemv_mod.gemv(parts.x, w, config=(4, 128, 4), att=(parts.acc, parts.m, parts.l))
    with pytest.raises(ShapeError, match=r"H x Dh = K = 64"):
        gemv_mod.gemv(parts.x, w[:, :64], config=(4, 128, 4), out_dtype=torch.bfloat16,
                      att=(parts.acc, parts.m, parts.l))
