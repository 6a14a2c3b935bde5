"""TensorRT and FP8 on a GPU. Skipped here with the reason naming what is missing; on CPU the error paths are
tested in test_errors.py."""

from __future__ import annotations

import pytest
import torch

from export.exporter import export
from export.quantize import fp8_requirements
from export.tensorrt_target import tensorrt_requirements
from specs.export import ExportConfig
from specs.modelcard import ModelCard

pytestmark = pytest.mark.gpu


@pytest.fixture
def real_model():
    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug")).eval()


def _skip_unless(missing):
    if missing:
        pytest.skip("; ".join(missing))


def test_tensorrt_engine_matches_pytorch(real_model, tmp_path):
    _skip_unless(tensorrt_requirements())
    out = export(real_model, ExportConfig(target="tensorrt", outdir=str(tmp_path / "a"), hooks=()), atol=1e-3)
    card = ModelCard.load(out.outdir / "modelcard.json")
    card.verify(out.outdir)
    assert out.path.name == "model.plan" and {"model.plan", "model.onnx"} <= set(card.files)
    assert card.metadata["parity"]["max_abs_diff"] <= 1e-3 and card.metadata["parity_onnx"]["passed"]


def test_fp8_torch_export(real_model, tmp_path):
    _skip_unless(fp8_requirements())
    out = export(real_model, ExportConfig(target="torch_export", quantize="fp8", dtype="bf16",
                                          outdir=str(tmp_path / "a"), hooks=()))
    q = out.card.metadata["quantization"]
    assert q["scheme"].startswith("torchao Float8") and abs(q["perplexity_rel_change"]) < 0.05
    program = torch.export.load(out.path)
    assert program.module() is not None
