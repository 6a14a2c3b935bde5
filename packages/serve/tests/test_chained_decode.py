"""The batch-1 decode path of kernel 0.8 end to end, in a process of its own: every projection through the gemv
kernel's PDL op (a table naming each shape), the SwiGLU in the gate/up gemv's epilogue, decode attention through its
PDL op (with its combine kernel, or, as the second parameter, the unified attention: o's gemv reading its
accumulators), with folded norms,
in fp32: the plain model's greedy tokens. On a GPU the kernels launch (chained by PDL on
sm90+); elsewhere they run under Triton's interpreter (which needs Triton 3.9's: 3.6's cannot take a loop bound
derived from the program id)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from model.lm import TransformerLM
from specs.presets import preset

_SCRIPT = """
import json, os, sys, torch
from safetensors.torch import load_file
from kernel import Implementation, default_registry
from kernel.triton import decode_attention, gemv  # (registers their ops)
from model.lm import TransformerLM
from serve.fast import FastGenerator
from specs.presets import preset
reg = default_registry()  # the PDL ops for any device and dtype (fp32 here): registered for this process
reg.register(Implementation(op="linear", name="pdl_any", target="kernel.triton.skinny:linear_pdl", backward=False))
reg.register(Implementation(op="decode_attention", name="pdl_any",
                            target="kernel.triton.decode_attention:decode_attention_pdl", backward=False))
reg.register(Implementation(op="decode_attention_unified", name="pdl_any",
                            target="kernel.triton.decode_attention:decode_attention_unified_pdl", backward=False))
device = "cuda" if torch.cuda.is_available() else "cpu"
card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
state = load_file(sys.argv[1])
prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3)).to(device)
unified = sys.argv[3] == "unified"  # the unified attention (o's gemv reading its accumulators), else the combine kernel
models = [TransformerLM(preset("llama-debug")).eval() for _ in range(2)]
for m in models:
    m.load_state_dict(state)
    m.to(device)
want = FastGenerator(models[0], 1, 16, compile=None).generate(prompt, 6)
models[1].fuse_projections()  # every projection's shape into a gemv table for this "card", chained (PDL 1)
shapes = {gemv.tile_key(*m.weight.shape, m.weight.dtype) for m in models[1].modules() if isinstance(m, torch.nn.Linear)}
table = {k: [16, 64, 1, 1] for k in shapes} | {k + " glu": [16, 64, 1, 1] for k in shapes}  # few programs
with open(sys.argv[2], "w") as f:
    json.dump({card: table}, f)
os.environ[gemv.TILES_ENV] = sys.argv[2]
calls = {}
for name in ("gemv_pdl", "decode_attention_pdl", "decode_attention_unified"):
    real = getattr(torch.ops.lmstack, name)
    def counted(*a, _real=real, _name=name):
        calls[_name] += 1
        calls["glu"] += _name == "gemv_pdl" and a[9] is True  # the SwiGLU in the gate/up gemv's epilogue
        calls["att"] += _name == "gemv_pdl" and len(a) > 11 and a[11] is not None  # o reading the unified accumulators
        return _real(*a)
    setattr(torch.ops.lmstack, name, counted)
layers = len(models[1].model.layers)
n = 6
calls.update({"gemv_pdl": 0, "glu": 0, "att": 0, "decode_attention_pdl": 0, "decode_attention_unified": 0})
gen = FastGenerator(models[1], 1, 16, compile=None, linear_impl="pdl_any", decode_attention="pdl_any",
                    fuse_swiglu=True, fold_norms=True, unified=unified)
got = gen.generate(prompt, n)
print(unified, want.tolist(), got.tolist(), calls)
attn = "decode_attention_unified" if unified else "decode_attention_pdl"
steps = n - 1  # (the first token comes from the prefill, five rows: not one-row kernels but its LM head's, which
# runs on the last position alone, logits_to_keep=1)
ok = (torch.equal(got, want) and calls[attn] == steps * layers
      and calls["gemv_pdl"] == steps * (4 * layers + 1) + 1 and calls["glu"] == steps * layers
      and calls["att"] == (steps * layers if unified else 0))
sys.exit(0 if ok else 1)
"""


@pytest.mark.parametrize("attention", ["combine", "unified"])
def test_the_chained_batch1_path_decodes_the_plain_models_tokens(tmp_path, attention):
    pytest.importorskip("triton")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    with torch.no_grad():  # norm weights that are not ones, so folding them is visible
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    weights = tmp_path / "llama.safetensors"
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(weights), str(tmp_path / "gemv.json"), attention], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
