"""FastGenerator(unified=...): decode steps whose attention leaves its output in the cache's per-layer accumulators
and whose output projections read it from there (no combine kernel), with the registry's torch reference here:
the same greedy tokens as plain decode, eager and compiled, int8 layers included; where it cannot apply, a
ConfigError that says why. (The Triton kernels' chain: test_chained_decode.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from compress import quantize_
from model.lm import TransformerLM
from serve.fast import FastGenerator, RegistryLinear
from specs.errors import ConfigError, PluginError
from specs.presets import preset


def _pair(tiny_lm):
    return copy.deepcopy(tiny_lm), copy.deepcopy(tiny_lm)


@pytest.mark.parametrize("compile", [None, "default"])
def test_unified_decode_gives_the_plain_decodes_tokens(tiny_lm, compile):
    torch._dynamo.reset()
    plain, uni = _pair(tiny_lm)
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    want = FastGenerator(plain, 1, 32, compile=compile, backend="eager", linear_impl="reference",
                         unified=False).generate(prompt, 10)
    gen = FastGenerator(uni, 1, 32, compile=compile, backend="eager", linear_impl="reference", unified=True)
    assert gen.unified and all(m.accepts_att for m in uni.modules() if hasattr(m, "accepts_att"))
    got = gen.generate(prompt, 10)
    assert torch.equal(got, want)
    ws = gen.cache.unified_ws
    layers = len(uni.model.layers)
    H, Dh = tiny_lm.config.n_heads, tiny_lm.config.head_dim
    # after a step the last layer's row holds its output (the reference's sums are 1) and it zeroed layer 0's
    assert ws.shape[0] == layers and torch.all(ws[layers - 1, :, H * Dh:H * Dh + H] == 1.0)
    assert not ws[0].any()
    assert torch.equal(gen.generate(prompt, 10), want)  # again, from a reset cache


def test_unified_decode_with_int8_layers(tiny_lm):
    """The int8 projections (compress) read the accumulators too: the same tokens as the int8 model without."""
    plain, uni = _pair(tiny_lm)
    for m in (plain, uni):
        m.fuse_projections()
        quantize_(m)
    prompt = torch.randint(0, tiny_lm.config.vocab_size, (1, 4), generator=torch.Generator().manual_seed(2))
    want = FastGenerator(plain, 1, 24, compile=None, unified=False).generate(prompt, 8)
    gen = FastGenerator(uni, 1, 24, compile=None, unified=True)
    assert gen.unified and uni.model.layers[0].self_attn.o_proj.accepts_att
    assert torch.equal(gen.generate(prompt, 8), want)
    H, Dh = tiny_lm.config.n_heads, tiny_lm.config.head_dim
    assert torch.all(gen.cache.unified_ws[-1, :, H * Dh:H * Dh + H] == 1.0)  # the last layer's output was left there


def test_unified_auto_is_off_off_the_pdl_chain_and_bad_requests_say_why(tiny_lm):
    plain, _ = _pair(tiny_lm)
    gen = FastGenerator(plain, 1, 16, compile=None, linear_impl="reference")
    assert gen.unified is False and gen.cache.unified_ws is None  # auto: only with triton_pdl's attention
    with pytest.raises(ConfigError, match="unified must be True, False or 'auto'"):
        FastGenerator(copy.deepcopy(tiny_lm), 1, 16, compile=None, unified="yes")
    with pytest.raises(ConfigError, match="output projections cannot read"):
        FastGenerator(copy.deepcopy(tiny_lm), 1, 16, compile=None, linear_impl=None, fold_norms=False,
                      unified=True)
    untouched = copy.deepcopy(tiny_lm)
    with pytest.raises(PluginError, match="unknown decode_attention_unified implementation 'sdpa'"):
        FastGenerator(untouched, 1, 16, compile=None, linear_impl="reference", decode_attention="sdpa", unified=True)
    assert not any(isinstance(m, RegistryLinear) for m in untouched.modules())  # refused before routing anything
    one = TransformerLM(preset("llama-debug", vocab_size=300, n_layers=1)).eval()
    with pytest.raises(ConfigError, match="two or more attention layers, the model has 1"):
        FastGenerator(one, 1, 16, compile=None, linear_impl="reference", unified=True)
