"""torch.export (.pt2) and TorchScript (.pt) targets of TransformerLM, reloaded and compared at fresh shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.exporter import export
from export.quantize import Int8WeightOnlyLinear
from specs.export import ExportConfig
from specs.modelcard import ModelCard

L, KVH, DH, V = 2, 2, 16, 512  # llama-debug


def _inputs(B, T, S, g):
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, S + T, dtype=torch.long)
    pos = (torch.arange(T) + S).expand(B, T).contiguous()
    past = [torch.randn(B, KVH, S, DH, generator=g) for _ in range(2 * L)]
    return ids, mask, pos, past


def N_LINEAR(model):
    return sum(type(m) is nn.Linear for m in model.modules())


def _decode_with(module, model, B=2, prompt=6, steps=4):
    """Prefill + decode through the reloaded artifact vs the model's own cache; worst |logit diff|."""
    g = torch.Generator().manual_seed(7)
    cache = model.new_cache(B)
    ids = torch.randint(0, V, (B, prompt), generator=g)
    past = [torch.zeros(B, KVH, 0, DH) for _ in range(2 * L)]
    worst = 0.0
    with torch.no_grad():
        for _ in range(steps + 1):
            S, T = past[0].shape[2], ids.shape[1]
            logits, *past = module(ids, torch.ones(B, S + T, dtype=torch.long),
                                   (torch.arange(T) + S).expand(B, T).contiguous(), *past)
            worst = max(worst, float((logits - model(ids, cache=cache)).abs().max()))
            ids = torch.randint(0, V, (B, 1), generator=g)
    return worst


def test_torch_export_pt2_roundtrip(lm, tmp_path):
    out = export(lm, ExportConfig(target="torch_export", outdir=str(tmp_path / "a"), hooks=()),
                 vocab_size=V, d_model=64)
    assert out.path.name == "model.pt2" and str(out).endswith("model.pt2")
    ModelCard.load(out.outdir / "modelcard.json").verify(out.outdir)
    program = torch.export.load(out.path)
    names = {str(s) for s in program.range_constraints}
    assert len(names) >= 3  # batch, sequence and past are symbolic
    mod = program.module()
    assert _decode_with(mod, lm) <= 1e-4
    g = torch.Generator().manual_seed(3)
    for B, T, S in [(1, 1, 0), (4, 3, 9)]:
        ids, mask, pos, past = _inputs(B, T, S, g)
        got = mod(ids, mask, pos, *past)
        assert got[0].shape == (B, T, V) and got[1].shape == (B, KVH, S + T, DH)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_torchscript_roundtrip(lm, tmp_path, quantize):
    out = export(lm, ExportConfig(target="torchscript", quantize=quantize, outdir=str(tmp_path / "a"),
                                          hooks=()))
    card = ModelCard.load(out.outdir / "modelcard.json")
    card.verify(out.outdir)
    module = torch.jit.load(str(out.path))
    with torch.jit.optimized_execution(False):  # no re-profiling per shape (slow, same results)
        worst = _decode_with(module, lm)
    if quantize == "none":
        assert worst <= 1e-4 and "quantization" not in card.metadata
    else:
        q = card.metadata["quantization"]
        assert q["linear_layers"] == N_LINEAR(lm) and card.metadata["parity"]["max_abs_diff"] <= 1e-4
        assert 0 < worst < 0.1 and abs(q["logit_max_abs_change"] - worst) < 0.1
        assert abs(q["perplexity_rel_change"]) < 0.05
        assert any(t.dtype == torch.int8 for t in module.state_dict().values())


def test_torch_export_int8_stores_int8_weights(lm, tmp_path):
    out = export(lm, ExportConfig(target="torch_export", quantize="int8", outdir=str(tmp_path / "a"),
                                          hooks=()))
    program = torch.export.load(out.path)
    int8 = [k for k, v in program.state_dict.items() if v.dtype == torch.int8]
    assert len(int8) == N_LINEAR(lm)
    q = out.card.metadata["quantization"]
    assert q["scheme"].startswith("int8 weight-only") and q["logit_mean_abs_change"] > 0
    assert not any(isinstance(m, Int8WeightOnlyLinear) for m in lm.modules())  # model left as it was


def test_torchscript_fp16(lm, tmp_path):
    out = export(lm, ExportConfig(target="torchscript", dtype="fp16", outdir=str(tmp_path / "a"), hooks=()))
    meta = out.card.metadata
    assert meta["inputs"][3]["dtype"] == "float16" and meta["outputs"][0]["dtype"] == "float16"
    assert meta["parity"]["passed"] and meta["parity"]["atol"] == 2e-2  # vs the fp16 eager model
    module = torch.jit.load(str(out.path))
    assert {t.dtype for t in module.state_dict().values() if t.is_floating_point()} == {torch.float16}
    assert next(lm.parameters()).dtype == torch.float32  # the caller's model is not converted
