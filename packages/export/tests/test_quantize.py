import pytest
import torch
from torch import nn

from export.errors import ExportError, MissingDependencyError
from export.quantize import Int8WeightOnlyLinear, fp8_requirements, fp8_weight_only, int8_weight_only


def test_int8_linear_matches_dequantized_reference():
    torch.manual_seed(0)
    lin = nn.Linear(48, 24, bias=True)
    q = Int8WeightOnlyLinear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.scale.shape == (24,)
    w = lin.weight.detach()
    scale = w.abs().amax(1) / 127
    # independent reference: symmetric per-row round-to-nearest
    w_hat = torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None]
    assert (w_hat - w).abs().max() <= scale.max() / 2 + 1e-7
    x = torch.randn(5, 48)
    torch.testing.assert_close(q(x), x @ w_hat.T + lin.bias, rtol=1e-5, atol=1e-5)
    assert (q(x) - lin(x)).abs().max() < 0.02


def test_int8_weight_only_copies_and_replaces_every_linear(tiny_model):
    qmodel, n = int8_weight_only(tiny_model)
    assert n == sum(isinstance(m, nn.Linear) for m in tiny_model.modules())
    assert not any(type(m) is nn.Linear for m in qmodel.modules())
    assert any(type(m) is nn.Linear for m in tiny_model.modules())  # the original is untouched
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        a, b = tiny_model(ids), qmodel(ids)
    assert 0 < (a - b).abs().max() < 0.05 * a.std() * 10


def test_int8_without_linear_layers_is_an_error():
    with pytest.raises(ExportError, match="no nn.Linear"):
        int8_weight_only(nn.Sequential(nn.ReLU()))


@pytest.mark.skipif(not fp8_requirements(), reason="FP8 prerequisites are present here")
def test_fp8_missing_prerequisites_are_named():
    with pytest.raises(MissingDependencyError) as err:
        fp8_weight_only(nn.Linear(4, 4))
    msg = str(err.value)
    assert "quantize='fp8' needs" in msg
    assert ("torchao" in msg) or ("compute capability >= 8.9" in msg)
