"""Other models: GPT-2 TransformerLM (learned positions, tied head), a checkpoint through the CLI, and a model that
only satisfies the specs LanguageModel protocol (tests/tiny_lm.py). Llama-style TransformerLM is test_onnx.py's.

Export's PastKVCache declares the specs KVCache ``fixed_shape`` capability, so the model builds its masks from the
lengths as tensors and never reads them on the host: batch, sequence and past axes all stay dynamic.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ort_session

from export.exporter import export
from specs.export import ExportConfig
from specs.modelcard import ModelCard
from specs.presets import preset


def _model(name):
    from model.lm import TransformerLM

    torch.manual_seed(0)
    return TransformerLM(preset(name)).eval()


@pytest.mark.parametrize("target", ["torch_export", "torchscript"])
def test_gpt2_torch_targets(tmp_path, target):
    m = _model("gpt2-debug")
    out = export(m, ExportConfig(target=target, quantize="int8", outdir=str(tmp_path / "a"), hooks=()))
    meta = json.loads((out.outdir / "modelcard.json").read_text())["metadata"]
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["quantization"]["logit_mean_abs_change"] > 0


def test_cli_exports_a_saved_checkpoint(tmp_path, capsys):
    from export.cli import _main

    _model("llama-debug").save_pretrained(tmp_path / "ckpt")
    rc = _main(["--model", str(tmp_path / "ckpt"), "--target", "onnx", "--quantize", "int8", "--outdir",
                str(tmp_path / "artifacts"), "--no-hooks"])
    assert rc == 0 and "artifact:" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "artifacts" / "modelcard.json")
    card.verify(tmp_path / "artifacts")
    assert card.lineage[0].kind == "checkpoint" and card.lineage[0].name == "ckpt"


def test_any_protocol_model_exports_to_onnx(tiny_model, tmp_path):
    """A LanguageModel that is not lmstack's (its own cache, masks and RoPE) exports and validates the same way."""
    out = export(tiny_model, ExportConfig(target="onnx", quantize="int8", outdir=str(tmp_path / "a"), hooks=()),
                 vocab_size=128, d_model=32)
    meta = out.card.metadata
    assert meta["parity"]["passed"] and meta["parity"]["random_past"]["present_max_abs_diff"] <= 1e-4
    assert meta["quantization"]["ops"]["MatMulInteger"] == 15
    sess = ort_session(out.path)
    past0 = sess.get_inputs()[3]
    assert past0.name == "past_key_values.0.key" and past0.shape[1:] == [2, "past_sequence_length", 8]


def test_tied_weights_count_once_towards_the_external_data_threshold():
    from export.onnx_target import weight_bytes

    m = _model("gpt2-debug")  # tied embedding and head
    every = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    emb = m.config.vocab_size * m.config.d_model * 4
    assert weight_bytes(m) == every - emb
