"""lmstack checkpoint directories: round trips, sharding, atomic writes and the errors bad checkpoints give."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, atomic_directory, parse_size
from model.lm import TransformerLM
from specs.errors import ConfigError, ShapeError
from specs.migrations import SCHEMA_VERSION
from specs.modelcard import IntegrityError, ModelCard, sha256_file
from specs.presets import preset


@pytest.fixture(scope="module")
def lm() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug")).eval()


@pytest.fixture
def saved(lm, tmp_path):
    return lm.save_pretrained(tmp_path / "ckpt")


def test_round_trip_is_bit_identical(lm, saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["config.json", "model.safetensors", "modelcard.json"]
    back = TransformerLM.from_pretrained(saved)
    assert back.config == lm.config
    for (k, a), (_, b) in zip(lm.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randint(0, 512, (1, 9))
    assert torch.equal(back.eval()(x), lm(x))


def test_config_and_card_contents(lm, saved):
    doc = json.loads((saved / "config.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["d_model"] == 64 and doc["n_kv_heads"] == 2
    card = ModelCard.load(saved / "modelcard.json")
    assert set(card.files) == {"model.safetensors", "config.json"}
    f = card.files["model.safetensors"]
    w = saved / "model.safetensors"
    assert f.sha256 == sha256_file(w) and f.bytes == w.stat().st_size
    assert card.config["d_model"] == 64 and card.metadata["num_params"] == lm.num_params()


def test_tied_head_saved_once_and_retied(tmp_path):
    lm = TransformerLM(preset("gpt2-debug"))
    lm.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    back = TransformerLM.from_pretrained(tmp_path)
    assert back.lm_head.weight is back.model.embed_tokens.weight


def test_sharded_with_index(lm, tmp_path):
    lm.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in lm.state_dict().values())
    assert not (tmp_path / "model.safetensors").exists()
    back = TransformerLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), back.state_dict().values()))


def test_resave_replaces_weights_and_keeps_other_files(lm, tmp_path):
    lm.save_pretrained(tmp_path, max_shard_size="40KB")
    (tmp_path / "tokenizer.json").write_text("{}")
    lm.save_pretrained(tmp_path)  # unsharded now: stale shards and index must go
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "model.safetensors", "modelcard.json", "tokenizer.json"]
    TransformerLM.from_pretrained(tmp_path)


def test_failed_write_leaves_the_old_directory_untouched(lm, saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    import model.checkpoint as ckpt

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        lm.save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_atomic_directory_rejects_a_file_target(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"), atomic_directory(tmp_path / "f"):
        pass


def test_missing_directory_and_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        TransformerLM.from_pretrained(tmp_path / "nope")
    (saved / "config.json").rename(saved / "config.bak")
    with pytest.raises(CheckpointError, match=r"config.json: missing"):
        TransformerLM.from_pretrained(saved)
    (saved / "config.bak").rename(saved / "config.json")
    (saved / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match="model.safetensors: listed in modelcard.json but missing"):
        TransformerLM.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        TransformerLM.from_pretrained(saved, verify=False)


def test_missing_model_card_needs_verify_false(saved):
    (saved / "modelcard.json").unlink()
    with pytest.raises(CheckpointError, match="verify=False"):
        TransformerLM.from_pretrained(saved)
    TransformerLM.from_pretrained(saved, verify=False)


def test_truncated_weights(saved):
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        TransformerLM.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors file"):
        TransformerLM.from_pretrained(saved, verify=False)


def test_tampered_weights_fail_the_hash(saved):
    w = saved / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # same size, one tensor byte flipped
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 .* does not match"):
        TransformerLM.from_pretrained(saved)


def test_shape_mismatch_names_the_tensor(saved):
    doc = json.loads((saved / "config.json").read_text())
    doc["d_ff"] = 100
    (saved / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ShapeError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(172, 64\) but "
                                         r"the config expects \(100, 64\)"):
        TransformerLM.from_pretrained(saved, verify=False)


def test_missing_and_unexpected_tensors_are_listed(saved):
    w = saved / "model.safetensors"
    state = load_file(w)
    del state["model.norm.weight"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, w)
    with pytest.raises(CheckpointError,
                       match=r"missing tensors 'model.norm.weight'; unexpected tensors 'extra.weight'"):
        TransformerLM.from_pretrained(saved, verify=False)


def test_pickle_weights_are_refused(tmp_path, lm):
    lm.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors only"):
        TransformerLM.from_pretrained(tmp_path, verify=False)


def test_bad_config_is_a_config_error(saved):
    doc = json.loads((saved / "config.json").read_text())
    doc["n_heads"] = 5
    (saved / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="n_heads"):
        TransformerLM.from_pretrained(saved, verify=False)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TransformerLM.from_pretrained(saved, verify=False)


def test_v1_config_is_migrated(lm, saved):
    doc = json.loads((saved / "config.json").read_text())
    doc["schema_version"] = 1
    doc["ffn_dim"] = doc.pop("d_ff")
    (saved / "config.json").write_text(json.dumps(doc))
    assert TransformerLM.from_pretrained(saved, verify=False).config == lm.config


def test_load_dtype(saved):
    back = TransformerLM.from_pretrained(saved, dtype=torch.bfloat16)
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
    assert back.new_cache(1, 8).k_cache[0].dtype == torch.bfloat16


def test_unknown_format_and_sizes(lm, tmp_path):
    with pytest.raises(ConfigError, match="valid: lmstack, hf"):
        lm.save_pretrained(tmp_path, format="gguf")
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(7) == 7
    with pytest.raises(ConfigError, match="max_shard_size"):
        parse_size("lots")


def _tree(root):
    """Every path under ``root`` with its bytes (None for a directory): a snapshot to compare after a refusal."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


class _Int8Linear(torch.nn.Module):  # what a weight-only quantizer leaves: int8 weight, plus a per-row scale
    def __init__(self, linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.int8))
        self.register_buffer("scale", torch.ones(linear.out_features))


@pytest.mark.parametrize("format", ["lmstack", "hf"])
def test_a_model_changed_after_construction_is_not_saved_over_a_good_checkpoint(lm, saved, format):
    before = _tree(saved.parent)
    quantized = TransformerLM(lm.config).eval()
    quantized.lm_head = _Int8Linear(quantized.lm_head)
    with pytest.raises(ConfigError, match=r"not written: .*unexpected tensors 'lm_head.scale'; changed tensors "
                                          r"'lm_head.weight' \(512, 64\) int8 \(fresh: \(512, 64\) float\).*changed "
                                          r"after construction \(quantized, or modules replaced\).*save it before"):
        quantized.save_pretrained(saved, format=format)
    replaced = TransformerLM(lm.config).eval()
    replaced.model.layers[1].mlp.up_proj = torch.nn.Linear(64, 10)
    with pytest.raises(ConfigError, match=r"unexpected tensors 'model.layers.1.mlp.up_proj.bias'; changed tensors "
                                          r"'model.layers.1.mlp.up_proj.weight' \(10, 64\) float"):
        replaced.save_pretrained(saved, format=format)
    folded = TransformerLM(lm.config).eval().fold_norms()
    with pytest.raises(ConfigError, match="save the model before folding"):  # refused by its state_dict, as before
        folded.save_pretrained(saved, format=format)
    assert _tree(saved.parent) == before  # the good checkpoint's bytes, and no stray directories
    TransformerLM.from_pretrained(saved)


def test_save_into_a_file_or_the_working_directory_is_refused(lm, saved, monkeypatch):
    (saved.parent / "afile").write_text("x")
    before = _tree(saved.parent)
    for target in ("afile/sub", "afile/x/sub"):
        with pytest.raises(CheckpointError, match="afile is a file, not a directory; pass a path whose parents are "
                                                  "directories"):
            lm.save_pretrained(saved.parent / target)
    monkeypatch.chdir(saved)
    for target in (".", "..", saved, ""):
        with pytest.raises(CheckpointError, match="is the current working directory or one of its parents.*pass a "
                                                  "subdirectory"):
            lm.save_pretrained(target)
    assert _tree(saved.parent) == before
    lm.save_pretrained("sub")  # a subdirectory of the working directory is fine
    TransformerLM.from_pretrained(saved / "sub")


def test_load_dtype_names_and_bad_dtype_or_device(saved):
    for name, want in (("bf16", torch.bfloat16), ("float16", torch.float16), ("fp32", torch.float32)):
        assert TransformerLM.from_pretrained(saved, dtype=name).lm_head.weight.dtype == want
    for bad in ("bfloat", torch.int8, 16):
        with pytest.raises(ConfigError, match=r"dtype: expected a floating-point torch.dtype \(torch.bfloat16\) or one "
                                              r"of 'fp32', 'fp16', 'bf16'"):
            TransformerLM.from_pretrained(saved, dtype=bad)
    with pytest.raises(ConfigError, match="device: 'tpu' is not a torch device; expected a torch.device or a string "
                                          "such as 'cpu', 'cuda'"):
        TransformerLM.from_pretrained(saved, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: 'cuda:0' is not available on this machine"):
            TransformerLM.from_pretrained(saved, device="cuda:0")


def test_lora_form_weights_are_merged_with_their_adapter_config(tmp_path):
    """A LoRA run's weights (<m>.base_layer.weight + lora_A/B, PEFT's names) merge into <m>.weight by the r and
    lora_alpha of adapter/adapter_config.json (rsLoRA too); without that file they are a CheckpointError."""
    from model.pretrained import merge_lora_state

    g = torch.Generator().manual_seed(0)
    w, a, b = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g)
    state = {"x.base_layer.weight": w, "x.base_layer.bias": torch.ones(6), "x.lora_A.weight": a,
             "x.lora_B.weight": b, "y.weight": torch.zeros(3)}
    assert merge_lora_state({"y.weight": state["y.weight"]}, tmp_path) == {"y.weight": state["y.weight"]}
    with pytest.raises(CheckpointError, match=r"holds LoRA weights \(x.lora_A.weight, ...\) but .*adapter_config"):
        merge_lora_state(state, tmp_path)
    (tmp_path / "adapter").mkdir()
    for rslora, scale in ((False, 8 / 2), (True, 8 / 2 ** 0.5)):
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
            {"r": 2, "lora_alpha": 8, "use_rslora": rslora}))
        out = merge_lora_state(state, tmp_path)
        assert sorted(out) == ["x.bias", "x.weight", "y.weight"]
        torch.testing.assert_close(out["x.weight"], w + b @ a * scale)
