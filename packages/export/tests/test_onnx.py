"""ONNX target on TransformerLM (llama-debug): the seed's call, names, dynamic axes, parity, greedy, padding, int8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import ort_session

from export.exporter import export
from specs.export import ExportConfig
from specs.modelcard import ModelCard

L, KVH, DH, V = 2, 2, 16, 512  # llama-debug


@pytest.fixture(scope="module")
def fp32_export(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "artifacts"
    cfg = ExportConfig(target="onnx", opset=19, dynamic_axes=True, outdir=str(out), hooks=())
    return export(lm, cfg, vocab_size=lm.config.vocab_size, d_model=lm.config.d_model)


@pytest.fixture(scope="module")
def int8_export(lm, tmp_path_factory):
    """The seed's call: export(model, ExportConfig(...), vocab_size=..., d_model=cfg.d_model)."""
    cfg = lm.config
    out = tmp_path_factory.mktemp("onnx_int8") / "artifacts"
    return export(lm, ExportConfig(target="onnx", opset=19, quantize="int8", dynamic_axes=True, outdir=str(out),
                                   hooks=()), vocab_size=cfg.vocab_size, d_model=cfg.d_model)


def test_seed_call_writes_model_and_card(int8_export):
    out = int8_export
    assert str(out) == str(out.outdir / "model.onnx")
    assert sorted(p.name for p in out.outdir.iterdir()) == ["model.onnx", "modelcard.json"]
    card = ModelCard.load(out.outdir / "modelcard.json")
    card.verify(out.outdir)  # sha256 and sizes match the files
    assert set(card.files) == {"model.onnx"}
    assert card.config["d_model"] == 64 and card.config["vocab_size"] == V
    meta = card.metadata
    assert meta["opset"] == 19 and meta["target"] == "onnx" and meta["export_config"]["quantize"] == "int8"
    assert [i["name"] for i in meta["inputs"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= 1e-4
    q = meta["quantization"]
    assert q["ops"]["MatMulInteger"] >= 2 * 7  # every projection of both layers
    assert 0 < q["logit_mean_abs_change"] < 0.2 and q["bytes_int8"] < q["bytes_fp32"]
    assert np.isfinite(q["perplexity_artifact"]) and abs(q["perplexity_rel_change"]) < 0.05


def test_int8_graph_is_quantized_and_runs(int8_export, lm):
    proto = onnx.load(str(int8_export.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)
    sess = ort_session(int8_export.path)
    ids = torch.randint(0, V, (1, 6))
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 6), np.int64),
            "position_ids": np.arange(6)[None], **{f"past_key_values.{i}.{kv}": np.zeros((1, KVH, 0, DH), np.float32)
                                                    for i in range(L) for kv in ("key", "value")}}
    logits = sess.run(["logits"], feed)[0]
    with torch.no_grad():
        ref = lm(ids).numpy()
    assert 0 < np.abs(logits - ref).max() < 0.2


def test_ecosystem_names_and_dynamic_axes(fp32_export):
    proto = onnx.load(str(fp32_export.path))
    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    assert names_in == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    assert names_out == ["logits"] + [f"present.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    assert dims["input_ids"] == ["batch_size", "sequence_length"]
    assert dims["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert dims["past_key_values.1.value"] == ["batch_size", KVH, "past_sequence_length", DH]
    assert dims["logits"] == ["batch_size", "sequence_length", V]
    assert dims["present.0.key"][0] == "batch_size" and isinstance(dims["present.0.key"][2], str)
    onnx.checker.check_model(str(fp32_export.path), full_check=True)
    meta = json.loads((fp32_export.outdir / "modelcard.json").read_text())["metadata"]
    assert meta["outputs"][1]["name"] == "present.0.key" and meta["external_data"] is False


def _feed(ids, past, S):
    B, T = ids.shape
    return {"input_ids": ids, "attention_mask": np.ones((B, S + T), np.int64),
            "position_ids": np.broadcast_to(np.arange(S, S + T), (B, T)).copy(),
            **{f"past_key_values.{i}.{kv}": past[2 * i + j] for i in range(L) for j, kv in enumerate(("key", "value"))}}


def test_cached_decode_matches_pytorch_on_fresh_inputs(fp32_export, lm):
    """Independent of export.validate: prefill then decode steps on onnxruntime vs the model's own cache."""
    sess = ort_session(fp32_export.path)
    g = torch.Generator().manual_seed(123)
    B = 3
    ids = torch.randint(0, V, (B, 9), generator=g)
    cache = lm.new_cache(B)
    past = [np.zeros((B, KVH, 0, DH), np.float32)] * (2 * L)
    worst = 0.0
    for _ in range(6):
        S = past[0].shape[2]
        outs = sess.run(None, _feed(ids.numpy(), past, S))
        with torch.no_grad():
            ref = lm(ids, cache=cache).numpy()
        worst = max(worst, float(np.abs(outs[0] - ref).max()))
        past = outs[1:]
        assert past[0].shape == (B, KVH, S + ids.shape[1], DH)
        ids = torch.randint(0, V, (B, 1), generator=g)
    assert worst <= 1e-4


def test_greedy_loop_on_onnxruntime_reproduces_pytorch(fp32_export, lm):
    sess = ort_session(fp32_export.path)
    prompt = torch.tensor([[5, 17, 99, 3], [64, 2, 2, 410]])
    B, n_new = prompt.shape[0], 12
    # PyTorch greedy through the model's own cache
    cache = lm.new_cache(B)
    want, ids = [], prompt
    with torch.no_grad():
        for _ in range(n_new):
            ids = lm(ids, cache=cache)[:, -1].argmax(-1, keepdim=True)
            want.append(ids)
    want = torch.cat(want, 1).numpy()
    # onnxruntime greedy
    got, ids, past = [], prompt.numpy(), [np.zeros((B, KVH, 0, DH), np.float32)] * (2 * L)
    for _ in range(n_new):
        outs = sess.run(None, _feed(ids, past, past[0].shape[2]))
        ids = outs[0][:, -1].argmax(-1)[:, None]
        got.append(ids)
        past = outs[1:]
    np.testing.assert_array_equal(np.concatenate(got, 1), want)


def test_left_padded_batch_matches_unpadded_rows(fp32_export, lm):
    """attention_mask zeros (left padding) make a padded row equal to the same prompt run alone."""
    sess = ort_session(fp32_export.path)
    prompt = np.array([[7, 8, 9, 10]])
    alone = sess.run(["logits"], _feed(prompt, [np.zeros((1, KVH, 0, DH), np.float32)] * (2 * L), 0))[0]
    padded = np.array([[0, 0, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])
    mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
    pos = np.array([[1, 1, 0, 1, 2, 3], list(range(6))])
    feed = _feed(padded, [np.zeros((2, KVH, 0, DH), np.float32)] * (2 * L), 0)
    feed.update(attention_mask=mask, position_ids=pos)
    batched = sess.run(["logits"], feed)[0]
    np.testing.assert_allclose(batched[0, 2:], alone[0], atol=1e-5)


def test_no_cache_graph_with_external_data(lm, tmp_path):
    """with_cache=False graph, int8, with weights forced into model.onnx.data by a low threshold."""
    cfg = ExportConfig(target="onnx", with_cache=False, quantize="int8", outdir=str(tmp_path / "a"), hooks=())
    out = export(lm, cfg, external_data_threshold=1024)
    assert sorted(p.name for p in out.outdir.iterdir()) == ["model.onnx", "model.onnx.data", "modelcard.json"]
    card = ModelCard.load(out.outdir / "modelcard.json")
    card.verify(out.outdir)
    assert set(card.files) == {"model.onnx", "model.onnx.data"} and card.metadata["external_data"] is True
    proto = onnx.load(str(out.path), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
        "model.onnx.data"}
    assert card.metadata["parity"]["max_abs_diff"] <= 1e-4  # the fp32 graph, before quantization
    sess = ort_session(out.path)  # finds model.onnx.data beside it
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    ids = torch.randint(0, V, (2, 11))
    logits = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones((2, 11), np.int64),
                             "position_ids": np.broadcast_to(np.arange(11), (2, 11)).copy()})[0]
    with torch.no_grad():
        ref = lm(ids).numpy()
    assert 0 < np.abs(logits - ref).max() < 0.2  # int8: close, not equal
