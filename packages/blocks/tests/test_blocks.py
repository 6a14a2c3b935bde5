"""Norms, feed-forward sublayers and blocks against torch's own ops and hand-written compositions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attn.context import build_context
from attn.positions import RotaryEmbedding
from blocks import MLP, GPTBlock, LayerNorm, LlamaBlock, RMSNorm, SwiGLU, TransformerBlock, make_mlp, make_norm
from specs.presets import preset


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


def test_rmsnorm_matches_torch():
    norm = randomise(RMSNorm(16, eps=1e-6))
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, 1e-6))


def test_rmsnorm_bf16_normalises_in_fp32():
    norm = RMSNorm(16)
    x = torch.randn(2, 16, dtype=torch.bfloat16) * 100
    want = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert torch.equal(norm.to(torch.bfloat16)(x), want)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    norm = randomise(LayerNorm(16, eps=1e-5, bias=bias))
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-5))
    assert (norm.bias is None) != bias


@pytest.mark.parametrize("act,fn", [("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
                                    ("relu", F.relu), ("silu", F.silu)])
def test_mlp_formula(act, fn):
    mlp = MLP(8, 32, activation=act)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), mlp.down_proj(fn(mlp.up_proj(x))))


@pytest.mark.parametrize("act,fn", [("silu", F.silu), ("gelu", F.gelu)])
def test_gated_formula(act, fn):
    glu = SwiGLU(8, 32, activation=act)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(glu(x), glu.down_proj(fn(glu.gate_proj(x)) * glu.up_proj(x)))


def test_factories_follow_the_config():
    assert isinstance(make_norm(preset("llama-debug")), RMSNorm)
    assert isinstance(make_norm(preset("gpt2-debug")), LayerNorm)
    assert isinstance(make_mlp(preset("llama-debug")), SwiGLU)
    mlp = make_mlp(preset("gpt2-debug"))
    assert isinstance(mlp, MLP) and mlp.activation == "gelu_tanh" and mlp.up_proj.bias is not None


@pytest.mark.parametrize("position", ["pre", "post"])
def test_residual_wiring(position):
    torch.manual_seed(0)
    cfg = preset("llama-debug", norm_position=position)
    block = randomise(TransformerBlock(cfg))
    x = torch.randn(2, 6, cfg.d_model)
    ctx = build_context(cfg, torch.zeros(2, 6, dtype=torch.long), rotary=RotaryEmbedding(cfg))
    attn, mlp, n1, n2 = block.self_attn, block.mlp, block.input_layernorm, block.post_attention_layernorm
    if position == "pre":
        h = x + attn(n1(x), ctx)
        want = h + mlp(n2(h))
    else:
        h = n1(x + attn(x, ctx))
        want = n2(h + mlp(h))
    torch.testing.assert_close(block(x, ctx), want)


def test_family_blocks_pin_their_choices():
    llama = LlamaBlock(preset("gpt2-debug"))
    assert isinstance(llama.input_layernorm, RMSNorm) and isinstance(llama.mlp, SwiGLU)
    gpt = GPTBlock(preset("llama-debug", norm_position="post"))
    assert isinstance(gpt.input_layernorm, LayerNorm) and isinstance(gpt.mlp, MLP) and gpt.norm_position == "pre"
    names = {n for n, _ in LlamaBlock(preset("llama-debug"), 3).named_parameters()}
    assert {"input_layernorm.weight", "self_attn.q_proj.weight", "mlp.gate_proj.weight",
            "post_attention_layernorm.weight"} <= names
    assert LlamaBlock(preset("llama-debug"), 3).self_attn.layer_idx == 3


def test_block_gradients_flow():
    cfg = preset("gpt2-debug", pos_encoding="none")
    block = GPTBlock(cfg)
    x = torch.randn(1, 4, cfg.d_model, requires_grad=True)
    block(x, build_context(cfg, torch.zeros(1, 4, dtype=torch.long))).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_example_lm_learns_and_decodes():
    path = Path(__file__).parents[1] / "examples" / "example_lm.py"
    spec = importlib.util.spec_from_file_location("example_lm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    stats = example.main(["--steps", "25"])
    assert stats["last_loss"] < stats["first_loss"] / 3


def test_swiglu_lets_a_gate_up_projection_that_takes_a_glu_apply_it():
    """A fused SwiGLU MLP whose gate/up projection has ``accepts_glu`` calls it with glu="silu" and hands its
    (F-wide) result to the down projection; the result is the plain MLP's."""
    from kernel.reference import linear as ref_linear

    class GluLinear(torch.nn.Linear):
        accepts_glu = True
        calls: list = []

        def forward(self, x, glu=None):
            self.calls.append(glu)
            return ref_linear(x, self.weight, self.bias, glu=glu)

    torch.manual_seed(0)
    mlp = SwiGLU(16, 40)
    x, r = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    want = mlp(x) + r
    mlp.fuse_projections()
    mlp.gate_up_proj.__class__ = GluLinear
    torch.testing.assert_close(mlp(x, residual=r), want, rtol=1e-5, atol=1e-5)
    assert GluLinear.calls == ["silu"]
    mlp.gate_up_proj.accepts_glu = False  # a layer that says no returns [gate | up], and the MLP applies SwiGLU
    torch.testing.assert_close(mlp(x, residual=r), want, rtol=1e-5, atol=1e-5)
    assert GluLinear.calls == ["silu", None]


def test_gpt2_mlp_goes_through_the_gelu_mlp_op_unless_a_projection_is_hooked():
    import dataclasses

    from kernel import default_registry, reference

    torch.manual_seed(0)
    mlp = randomise(MLP(16, 64, activation="gelu_tanh"))
    seen = []
    reg = default_registry()

    def spy(*a):
        seen.append(a)
        return reference.gelu_mlp(*a)

    reg.register(dataclasses.replace(reg.get("gelu_mlp", "reference"), target=spy), replace=True)
    try:
        x = torch.randn(2, 3, 16)
        y = mlp(x)
        assert len(seen) == 1
        torch.testing.assert_close(y, mlp.down_proj(F.gelu(mlp.up_proj(x), approximate="tanh")))
        # a hook on a projection (an activation probe) must still fire: the module calls are kept then
        fired = []
        handle = mlp.up_proj.register_forward_hook(lambda m, a, out: fired.append(tuple(out.shape)))
        torch.testing.assert_close(mlp(x), y)
        handle.remove()
        assert fired == [(2, 3, 64)] and len(seen) == 1
    finally:
        default_registry.cache_clear()
