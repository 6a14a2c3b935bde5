"""FastGenerator(layer_kernel=...): each layer of a one-row decode step as one kernel registry ``decode_layer`` call,
on the CPU: the torch reference through the model's wiring, and the Triton kernel itself under the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from model.lm import TransformerLM
from serve.fast import FastGenerator
from specs.errors import ConfigError, PluginError
from specs.presets import preset


def _llama(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(preset("llama-debug")).eval()
    with torch.no_grad():  # norm weights that are not ones, so folding them is visible
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return model


def test_layer_kernel_decodes_the_plain_models_tokens(monkeypatch):
    import kernel.reference as kref

    model = _llama()
    prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3))
    want = FastGenerator(model, 1, 16, compile=None).generate(prompt, 8)
    calls = []
    real = kref.decode_layer
    monkeypatch.setattr(kref, "decode_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    from kernel import default_registry

    default_registry().cache_clear()
    layered = _llama()
    gen = FastGenerator(layered, 1, 16, compile=None, linear_impl="reference", layer_kernel="reference")
    assert gen.layer_kernel == "reference" and all(b.layer_kernel == "reference" for b in layered.model.layers)
    assert torch.equal(gen.generate(prompt, 8), want)
    assert len(calls) == 7 * len(layered.model.layers), "every decode step of every layer (not the prefill)"
    counters = layered.model.layers[0].layer_counters
    assert counters.dtype == torch.int32 and not counters.any()
    # a later generator over the same model decides again: off here, so the layers take the per-op path
    calls.clear()
    again = FastGenerator(layered, 1, 16, compile=None, linear_impl="reference", layer_kernel=False)
    assert again.layer_kernel is None and all(b.layer_kernel is None for b in layered.model.layers)
    assert torch.equal(again.generate(prompt, 8), want) and not calls
    default_registry().cache_clear()


def test_layer_kernel_applies_only_where_it_can():
    prompt_model = _llama()
    # "auto" on the CPU: the registry's choice is the torch reference, so nothing changes
    gen = FastGenerator(prompt_model, 1, 16, compile=None, linear_impl="reference")
    assert gen.layer_kernel is None and all(b.layer_kernel is None for b in prompt_model.model.layers)
    with pytest.raises(ConfigError, match="one row, this generator has batch_size=2"):
        FastGenerator(_llama(), 2, 16, compile=None, linear_impl="reference", layer_kernel=True)
    with pytest.raises(ConfigError, match="fold_norms"):  # unfolded: the plain Linears cannot take the norm
        FastGenerator(_llama(), 1, 16, compile=None, linear_impl=None, layer_kernel=True)
    with pytest.raises(ConfigError, match="fuse_projections"):
        FastGenerator(_llama(), 1, 16, compile=None, fuse=False, linear_impl="reference", fold_norms=True,
                      layer_kernel=True)
    with pytest.raises(ConfigError, match="layer 0: .*fold_norms"):
        TransformerLM(preset("gpt2-debug")).use_layer_kernel("reference")
    with pytest.raises(PluginError, match="decode_layer"):
        FastGenerator(_llama(), 1, 16, compile=None, layer_kernel="nope")
    # a batch or a prefill through a layer that uses the kernel takes the per-op path: same logits as before
    model = _llama()
    ids = torch.randint(0, 500, (2, 6), generator=torch.Generator().manual_seed(1))
    want = model(ids)
    model.fuse_projections().fold_norms().use_layer_kernel("reference")
    torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
    model.use_layer_kernel(None)
    assert all(b.layer_kernel is None for b in model.model.layers)


_TRITON = """
import sys, torch
from safetensors.torch import load_file
from kernel import Implementation, default_registry
from model.lm import TransformerLM
from serve.fast import FastGenerator
from specs.presets import preset
# the Triton kernel on the CPU, under the interpreter: registered for this process as a CPU implementation
default_registry().register(Implementation(op="decode_layer", name="triton_cpu",
                                           target="kernel.triton.decode_layer:decode_layer", backward=False))
state = load_file(sys.argv[1])  # the parent's _llama() weights
prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3))
models = [TransformerLM(preset("llama-debug")).eval() for _ in range(2)]
for m in models:
    m.load_state_dict(state)
want = FastGenerator(models[0], 1, 16, compile=None).generate(prompt, 8)
got = FastGenerator(models[1], 1, 16, compile=None, linear_impl="reference",
                    layer_kernel="triton_cpu").generate(prompt, 8)
print(want.tolist(), got.tolist())
sys.exit(0 if torch.equal(got, want) else 1)
"""


def test_the_triton_layer_kernel_decodes_the_plain_models_tokens(tmp_path):
    """The Triton layer kernel itself: on a GPU, launched (fp32); elsewhere under Triton's interpreter, in a
    process of its own (the interpreter is chosen at import)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3)).cuda()
        want = FastGenerator(_llama().cuda(), 1, 16, compile=None).generate(prompt, 8)
        got = FastGenerator(_llama().cuda(), 1, 16, compile=None, linear_impl="reference",
                            layer_kernel="triton").generate(prompt, 8)
        assert torch.equal(got, want)
        return
    from safetensors.torch import save_file

    weights = tmp_path / "llama.safetensors"  # (clones: the tied head shares the embedding's storage)
    save_file({k: v.clone().contiguous() for k, v in _llama().state_dict().items()}, str(weights))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _TRITON, str(weights)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
