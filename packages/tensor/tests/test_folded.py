"""tensor.folded: an RMSNorm's weight folded into the Linears that read it, rstd and the residual around them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specs.errors import ConfigError
from tensor.folded import fold_norm_weight, linear_with, refuse_state_dict, rms_normalize


def _rmsnorm(x, w, eps):  # the textbook form: x / rms(x) * w
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_folding_the_weight_and_normalising_the_input_equals_norm_then_linear():
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 8), torch.rand(8) + 0.5
    lin = nn.Linear(8, 6)
    want = lin(_rmsnorm(x, w, 1e-6))
    res = torch.randn(3, 5, 6)
    fold_norm_weight([lin], w)
    torch.testing.assert_close(linear_with(lin, x, rms_eps=1e-6), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear_with(lin, x, rms_eps=1e-6, residual=res), want + res, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear_with(lin, x), lin(x))  # nothing asked: the layer alone


def test_layers_that_accept_the_prologue_get_it_as_keywords():
    seen = {}

    class Fused(nn.Linear):
        accepts_prologue = True

        def forward(self, x, rms_eps=None, residual=None):
            seen.update(rms_eps=rms_eps, residual=residual)
            return super().forward(x)

    layer, r = Fused(4, 4), torch.zeros(2, 4)
    linear_with(layer, torch.randn(2, 4), rms_eps=1e-5, residual=r)
    assert seen["rms_eps"] == 1e-5 and seen["residual"] is r


def test_rms_normalize_computes_in_fp32_and_keeps_the_dtype():
    x = torch.randn(4, 16).to(torch.bfloat16)
    got = rms_normalize(x, 1e-5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _rmsnorm(x.float(), 1.0, 1e-5), rtol=1e-2, atol=1e-2)


def test_fold_rejects_layers_it_cannot_fold_and_folded_modules_refuse_to_save():
    with pytest.raises(ConfigError, match="fold before quantizing"):
        fold_norm_weight([nn.Linear(4, 2).to(torch.float16).requires_grad_(False).half()], torch.ones(5))
    m = nn.Sequential(nn.Linear(2, 2))
    refuse_state_dict(m[0], "folded, save first")
    with pytest.raises(ConfigError, match="folded, save first"):
        m.state_dict()


class _Parts:  # what a unified decode attention hands the output projection (kernel.reference.UnifiedParts' shape)
    def __init__(self, out):
        self.x, self._out = torch.full((out.shape[0], 32), float("nan")), out

    def output(self):
        return self._out


def test_an_unmaterialised_attention_output_goes_to_layers_that_read_it_else_is_materialised():
    torch.manual_seed(1)
    out, res = torch.randn(2, 8), torch.randn(2, 1, 6)  # a decode step's (B, 1, N) residual
    plain = nn.Linear(8, 6)
    torch.testing.assert_close(linear_with(plain, None, residual=res, att=_Parts(out)), plain(out) + res.view(2, 6))
    seen = {}

    class Reader(nn.Linear):
        accepts_att = True

        def forward(self, x, residual=None, att=None):
            seen.update(x=x, att=att, residual=residual)
            return super().forward(att.output()) + residual

    parts = _Parts(out)
    layer = Reader(8, 6)
    want = super(Reader, layer).forward(out) + res.view(2, 6)
    torch.testing.assert_close(linear_with(layer, None, residual=res, att=parts), want)
    assert seen["x"] is parts.x and seen["att"] is parts and seen["residual"].shape == (2, 6)
    with pytest.raises(ConfigError, match="att replaces x"):
        linear_with(plain, out, att=parts)
    with pytest.raises(ConfigError, match="x is None without att"):
        linear_with(plain, None)
