import pytest
import torch
from torch import nn

from compress import Int8WeightOnlyLinear, quantize_
from model.lm import TransformerLM
from specs.errors import ConfigError
from specs.presets import preset


def test_linear_matches_dequantized_reference():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=True)
    q = Int8WeightOnlyLinear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127
    x = torch.randn(5, 64)
    deq = q.weight.float() * q.scale[:, None]
    torch.testing.assert_close(q(x), x @ deq.T + lin.bias, rtol=1e-5, atol=1e-5)
    # quantization error is bounded by half a step per weight
    assert (deq - lin.weight).abs().max() <= q.scale.max() / 2 + 1e-7


@pytest.mark.parametrize("name", ["llama-debug", "gpt2-debug"])
def test_quantized_model_stays_close(name):
    torch.manual_seed(0)
    model = TransformerLM(preset(name)).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        ref = model(x)
        n = quantize_(model)
        out = model(x)
    linears_per_layer = 4 + (3 if model.config.mlp == "swiglu" else 2)
    head = 0 if model.config.tie_embeddings else 1
    assert n == model.config.n_layers * linears_per_layer + head
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.02, rel
    remaining = [m for m in model.modules() if type(m) is nn.Linear]
    assert remaining == ([] if not model.config.tie_embeddings else [model.lm_head])


def test_tied_head_is_left_alone_and_errors():
    model = TransformerLM(preset("gpt2-debug"))
    quantize_(model)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ConfigError, match="valid: int8_weight_only"):
        quantize_(model, "int4")
    with pytest.raises(ConfigError, match="no nn.Linear"):
        quantize_(nn.Sequential(nn.ReLU()))


def test_quantized_decode_step_traces_as_one_graph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    quantize_(model)
    cache = model.new_cache(1, 16, kind="fixed")
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)  # eager first: kernel choices resolve outside
        step = torch.compile(lambda t: model(t, cache=cache), backend="eager", fullgraph=True)
        eager_cache = model.new_cache(1, 16, kind="fixed")
        model(torch.zeros(1, 3, dtype=torch.long), cache=eager_cache)
        tok = torch.ones(1, 1, dtype=torch.long)
        torch.testing.assert_close(step(tok), model(tok, cache=eager_cache))
