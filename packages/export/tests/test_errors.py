"""Bad input gets a clear error before any work, and a failed export never leaves artifacts that look complete."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import export.exporter as exporter_mod
from export.errors import ExportError, MissingDependencyError, ParityError
from export.exporter import export
from export.quantize import fp8_requirements
from export.tensorrt_target import tensorrt_requirements
from specs.errors import ConfigError, LmstackError
from specs.export import ExportConfig
from specs.modelcard import ModelCard


def _cfg(tmp_path, **kw):
    return ExportConfig(outdir=str(tmp_path / "artifacts"), hooks=(), **{"target": "torchscript", **kw})


def _no_leftovers(tmp_path):
    return [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_unsupported_opset(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"opset 17 is not supported.*18\.\.23"):
        export(tiny_model, _cfg(tmp_path, target="onnx", opset=17))
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(target="onnx", opset=30)
    assert not (tmp_path / "artifacts").exists()


def test_model_that_is_not_a_language_model(tmp_path):
    with pytest.raises(ConfigError, match="LanguageModel: missing 'config', 'new_cache'"):
        export(nn.Linear(4, 4), _cfg(tmp_path))
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        export(object(), _cfg(tmp_path))

    class NoDims(nn.Module):
        config = object()

        def new_cache(self, batch_size, max_seq_len=None, **kw):
            return None

    with pytest.raises(ConfigError, match="model.config: missing integer fields"):
        export(NoDims(), _cfg(tmp_path))


def test_dims_checked_against_model_config(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"vocab_size=32000 but the model has vocab_size=128"):
        export(tiny_model, _cfg(tmp_path), vocab_size=32000, d_model=32)
    with pytest.raises(ConfigError, match=r"d_model=64 but the model has d_model=32"):
        export(tiny_model, _cfg(tmp_path), vocab_size=128, d_model=64)


def test_static_axes_refused(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="dynamic_axes"):
        export(tiny_model, _cfg(tmp_path, dynamic_axes=False))


def test_unwritable_outdir(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = ExportConfig(target="torchscript", outdir=str(blocker / "artifacts"), hooks=())
    with pytest.raises(ExportError, match="not writable"):
        export(tiny_model, cfg)
    with pytest.raises(ExportError, match="exists and is not a directory"):
        export(tiny_model, ExportConfig(target="torchscript", outdir=str(blocker), hooks=()))
    assert blocker.read_text() == "x"


def test_injected_failure_after_artifact_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    def boom(**kw):
        assert (kw["workdir"] / "model.pt").is_file()  # the artifact exists in staging when we fail
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(exporter_mod, "build_card", boom)
    with pytest.raises(RuntimeError, match="injected"):
        export(tiny_model, _cfg(tmp_path))
    assert not (tmp_path / "artifacts").exists()
    assert _no_leftovers(tmp_path)


def test_failed_reexport_keeps_previous_complete_export(tiny_model, tmp_path, monkeypatch):
    first = export(tiny_model, _cfg(tmp_path))
    before = {p.name: p.read_bytes() for p in first.outdir.iterdir()}

    def boom(**kw):
        raise RuntimeError("crash while writing the card (injected)")

    monkeypatch.setattr(exporter_mod, "build_card", boom)
    with pytest.raises(RuntimeError):
        export(tiny_model, _cfg(tmp_path))
    assert {p.name: p.read_bytes() for p in first.outdir.iterdir()} == before
    ModelCard.load(first.outdir / "modelcard.json").verify(first.outdir)
    assert _no_leftovers(tmp_path)


def test_parity_failure_publishes_nothing(tiny_model, tmp_path):
    class Jittery(nn.Module):
        """Eager and traced runs draw different noise, so the artifact cannot match the model."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, positions=None, cache=None, attn_mask=None, document_ids=None):
            out = self.inner(input_ids, positions=positions, cache=cache, attn_mask=attn_mask)
            return out + 1e-2 * torch.rand_like(out)

        def new_cache(self, batch_size, max_seq_len=None, **kw):
            return self.inner.new_cache(batch_size, max_seq_len, **kw)

    with pytest.raises(ParityError, match=r"max \|logit diff\| .* > atol 0.0001.*nothing was written"):
        export(Jittery(tiny_model), _cfg(tmp_path))
    assert not (tmp_path / "artifacts").exists() and _no_leftovers(tmp_path)


@pytest.mark.skipif(not tensorrt_requirements(), reason="TensorRT and a GPU are present here")
def test_tensorrt_missing_is_named(tiny_model, tmp_path):
    with pytest.raises(MissingDependencyError, match="target='tensorrt' needs") as err:
        export(tiny_model, _cfg(tmp_path, target="tensorrt"))
    assert any("tensorrt" in m or "GPU" in m for m in err.value.missing)
    assert isinstance(err.value, LmstackError) and not (tmp_path / "artifacts").exists()


@pytest.mark.skipif(not fp8_requirements(), reason="FP8 prerequisites are present here")
def test_fp8_missing_is_named(tiny_model, tmp_path):
    with pytest.raises(MissingDependencyError, match="quantize='fp8' needs"):
        export(tiny_model, _cfg(tmp_path, target="torch_export", quantize="fp8", dtype="bf16"))
    with pytest.raises(ConfigError, match="set dtype='bf16'"):
        export(tiny_model, _cfg(tmp_path, target="torch_export", quantize="fp8"))
    assert not (tmp_path / "artifacts").exists()


def test_fp8_on_targets_without_it(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="fp8 is available for target 'torch_export'"):
        export(tiny_model, _cfg(tmp_path, target="onnx", quantize="fp8"))
    with pytest.raises(ConfigError, match="TorchScript cannot trace"):
        export(tiny_model, _cfg(tmp_path, target="torchscript", quantize="fp8"))
    with pytest.raises(ConfigError, match="int8 quantization starts from the fp32 graph"):
        export(tiny_model, _cfg(tmp_path, target="onnx", quantize="int8", dtype="fp16"))
    for target in ("onnx", "torch_export", "torchscript", "tensorrt"):  # int4 is gguf's alone
        with pytest.raises(ConfigError, match="int4 .*target 'gguf' alone|not supported for target 'tensorrt'"):
            export(tiny_model, _cfg(tmp_path, target=target, quantize="int4"))


@pytest.mark.parametrize("kw, message", [
    ({"eval_length": 0}, r"eval_length: expected an int >= 2 .*got 0"),
    ({"eval_length": 1}, r"eval_length: expected an int >= 2 .*NaN perplexity\), got 1"),
    ({"eval_length": 8.5}, r"eval_length: expected an int >= 2 .*got 8.5"),
    ({"eval_tokens": torch.tensor([1, 2, 3])}, r"eval_tokens: expected shape \(1, L\) with 2 <= L <= 64 .*got \(3,\)"),
    ({"eval_tokens": torch.tensor([[1]])}, r"eval_tokens: expected shape \(1, L\) .*got \(1, 1\)"),
    ({"eval_tokens": torch.ones(1, 65, dtype=torch.long)}, r"eval_tokens: expected shape .*got \(1, 65\)"),
    ({"eval_tokens": torch.tensor([[1.0, 2.0]])}, "eval_tokens: expected integer token ids, got dtype torch.float32"),
    ({"eval_tokens": torch.tensor([[1, 128]])}, r"eval_tokens: token id 128 is outside the vocabulary \[0, 128\)"),
    ({"eval_tokens": [[1, 2]]}, r"eval_tokens: expected a \(1, L\) tensor of token ids, got list"),
])
def test_bad_eval_sequence_refused_before_any_work(tiny_model, tmp_path, kw, message):
    """eval_length=0 used to publish NaN perplexities: a modelcard.json that is not valid JSON."""
    with pytest.raises(ConfigError, match=message):
        export(tiny_model, _cfg(tmp_path, quantize="int8"), **kw)
    assert not (tmp_path / "artifacts").exists() and _no_leftovers(tmp_path)


def test_shortest_eval_sequence_gives_a_strict_json_card(tiny_model, tmp_path):
    import json

    def no_constants(name):
        raise AssertionError(f"modelcard.json holds {name}")

    out = export(tiny_model, _cfg(tmp_path, quantize="int8"), eval_length=2)
    card = json.loads((tmp_path / "artifacts" / "modelcard.json").read_text(), parse_constant=no_constants)
    assert out.card.metadata["quantization"]["perplexity_tokens"] == 2 and card
