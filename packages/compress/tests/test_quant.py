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


def test_int8_layer_takes_a_folded_norm_and_a_residual():
    """rms_eps / residual (tensor.folded's prologue keywords): RMS-normalise x first, add the residual last, as the
    reference does around the dequantised weight."""
    torch.manual_seed(1)
    q = Int8WeightOnlyLinear(nn.Linear(64, 32, bias=True))
    assert q.accepts_prologue
    x, r = torch.randn(3, 64) * 4, torch.randn(3, 32)
    deq = q.weight.float() * q.scale[:, None]
    xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(q(x, rms_eps=1e-5, residual=r), xn @ deq.T + q.bias + r, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_folded_then_quantized_model_decodes_its_own_greedy_tokens():
    """Fold the norms, then quantize (the int8 layers normalise their input and add the residual): cached decode
    through FastGenerator gives the tokens an uncached forward of the same model picks, and the logits stay close
    to the float model's."""
    from serve.fast import FastGenerator

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    for layer in model.model.layers:
        layer.input_layernorm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    want = model(ids)
    model.fuse_projections()
    model.fold_norms()
    quantize_(model)
    assert all(layer.norms_folded for layer in model.model.layers) and model.can_fold_norms()
    got = model(ids)
    assert (got - want).norm() / want.norm() < 0.02
    gen = FastGenerator(model, 1, 16, compile=None, fold_norms=False)
    toks = gen.generate(ids, 5)
    seq = ids
    for i in range(5):  # greedy, one uncached forward per token
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        assert nxt.item() == toks[0, i].item()
        seq = torch.cat([seq, nxt], 1)


def test_int8_linear_applies_swiglu_to_its_gate_up_halves():
    """glu="silu": a fused gate/up layer returns silu(gate) * up of its own output (what a SwiGLU MLP would compute
    next). An MLP asks for it only once ``accepts_glu`` is set (off by default)."""
    torch.manual_seed(0)
    q = Int8WeightOnlyLinear(nn.Linear(64, 32, bias=True))
    assert q.accepts_glu is False
    x = torch.randn(3, 64)
    y = q(x)
    torch.testing.assert_close(q(x, glu="silu"), torch.nn.functional.silu(y[:, :16]) * y[:, 16:], rtol=1e-5,
                               atol=1e-5)
