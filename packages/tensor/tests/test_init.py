"""Init schemes: roles by name, the std each role gets, tied weights initialised once, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from specs.config import ModelConfig
from tensor.init import init_weights, mup_width_mult, param_role, param_std


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"d_model": 256, "n_heads": 4, "n_layers": 8, "d_ff": 512, "vocab_size": 1000, **kw})


class Tiny(torch.nn.Module):
    """Llama-style names: embed_tokens, q/o proj, gate/down proj, norms, lm_head."""

    def __init__(self, d=256, v=1000, tie=False):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(v, d)
        self.q_proj = torch.nn.Linear(d, d, bias=True)
        self.o_proj = torch.nn.Linear(d, d, bias=False)
        self.gate_proj = torch.nn.Linear(d, 2 * d, bias=False)
        self.down_proj = torch.nn.Linear(2 * d, d, bias=False)
        self.norm = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, v, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight


@pytest.mark.parametrize(("name", "shape", "role"), [
    ("model.embed_tokens.weight", (10, 4), "embedding"), ("transformer.wte.weight", (10, 4), "embedding"),
    ("layers.0.self_attn.o_proj.weight", (4, 4), "residual_out"), ("h.0.mlp.c_proj.weight", (4, 4), "residual_out"),
    ("layers.0.mlp.down_proj.weight", (4, 8), "residual_out"), ("layers.0.self_attn.q_proj.weight", (4, 4), "hidden"),
    ("h.0.attn.c_attn.bias", (12,), "bias"), ("layers.0.input_layernorm.weight", (4,), "norm"),
    ("lm_head.weight", (10, 4), "head"),
])
def test_param_role(name, shape, role):
    assert param_role(name, shape) == role


def _std(t):
    return t.float().std().item()


def test_normal_scheme_is_gpt2_scaled_residual():
    c = cfg(init="normal", init_std=0.02)
    m = Tiny()
    roles = init_weights(m, c, generator=torch.Generator().manual_seed(0))
    assert roles["o_proj.weight"] == "residual_out"
    assert math.isclose(_std(m.q_proj.weight), 0.02, rel_tol=0.05)
    assert math.isclose(_std(m.o_proj.weight), 0.02 / math.sqrt(16), rel_tol=0.05)
    assert math.isclose(_std(m.down_proj.weight), 0.02 / math.sqrt(16), rel_tol=0.05)
    assert math.isclose(_std(m.embed_tokens.weight), 0.02, rel_tol=0.05)
    assert torch.equal(m.q_proj.bias, torch.zeros(256)) and torch.equal(m.norm.weight, torch.ones(256))
    assert torch.equal(m.norm.bias, torch.zeros(256))


def test_small_scheme():
    c = cfg(init="small")
    m = Tiny()
    init_weights(m, c, generator=torch.Generator().manual_seed(0))
    assert math.isclose(_std(m.q_proj.weight), math.sqrt(2 / (5 * 256)), rel_tol=0.05)
    assert math.isclose(_std(m.o_proj.weight), 2 / (8 * math.sqrt(256)), rel_tol=0.05)


def test_mup_scheme_scales_with_width_and_zeroes_the_readout():
    c = cfg(init="mup", init_std=0.02)
    assert mup_width_mult(c, base_d_model=64) == 4.0
    m = Tiny()
    init_weights(m, c, base_d_model=64, generator=torch.Generator().manual_seed(0))
    assert math.isclose(_std(m.q_proj.weight), 0.02 / 2, rel_tol=0.05)
    assert math.isclose(_std(m.embed_tokens.weight), 0.02, rel_tol=0.05)
    assert torch.count_nonzero(m.lm_head.weight) == 0
    assert param_std("hidden", c) == param_std("hidden", cfg(init="normal", init_std=0.02))  # base = d_model


def test_tied_weights_initialised_once_as_embedding():
    m = Tiny(tie=True)
    roles = init_weights(m, cfg(init="mup"), base_d_model=64)
    assert "lm_head.weight" not in roles and roles["embed_tokens.weight"] == "embedding"
    assert torch.count_nonzero(m.lm_head.weight) > 0  # not zeroed as a readout


def test_same_seed_same_weights_and_mapping_input():
    a, b = Tiny(), Tiny()
    init_weights(a, cfg(), generator=torch.Generator().manual_seed(3))
    init_weights(dict(b.named_parameters()), cfg(), generator=torch.Generator().manual_seed(3))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
