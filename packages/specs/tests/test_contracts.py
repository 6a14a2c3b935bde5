import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specs import Batch, IntegrityError, ModelCard, PluginError, ShapeError, TensorSpec, resolve
from specs.errors import ConfigError
from specs.metadata import load_metadata, validate_metadata
from specs.modelcard import card_v1_to_v2
from specs.plugins import available, selected
from specs.protocols import KVCache, LanguageModel, Tokenizer


@dataclass
class Arr:
    shape: tuple
    dtype: str = "float32"


def test_tensor_spec_binds_and_names_the_dim():
    spec = TensorSpec("B", "T", "D")
    assert spec.check(Arr((2, 3, 8)), D=8) == {"B": 2, "T": 3, "D": 8}
    with pytest.raises(ShapeError, match=r"dim 2 \(D\) is 7 but D=8"):
        spec.check(Arr((2, 3, 7)), "x", D=8)
    with pytest.raises(ShapeError, match="expected 3 dims"):
        spec.check(Arr((2, 3)), "x")
    with pytest.raises(ShapeError, match="dim 1 must be 4"):
        TensorSpec("B", 4).check(Arr((1, 5)))
    with pytest.raises(ShapeError, match="dtype int8 not allowed"):
        TensorSpec("B", dtypes=("float32",)).check(Arr((1,), "int8"))


@given(st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_tensor_spec_repeated_names_must_agree(dims):
    names = [f"d{i % 2}" for i in range(len(dims))]
    spec = TensorSpec(*names)
    consistent = all(dims[i] == dims[i % 2] for i in range(len(dims)))
    if consistent:
        spec.check(Arr(tuple(dims)))
    else:
        with pytest.raises(ShapeError):
            spec.check(Arr(tuple(dims)))


def test_batch_checks_shapes():
    b = Batch(input_ids=Arr((2, 5), "int64"), labels=Arr((2, 5), "int64"))
    assert b.shape == (2, 5) and b.num_tokens() == 10 and set(b.as_dict()) == {"input_ids", "labels"}
    with pytest.raises(ShapeError, match="Batch.labels"):
        Batch(input_ids=Arr((2, 5), "int64"), labels=Arr((2, 4), "int64"))


def test_model_card_round_trip_verify_and_tamper(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"abc" * 100)
    card = ModelCard.for_files("m", tmp_path, ["w.bin"], config={"d_model": 8})
    (tmp_path / "modelcard.json").write_text(card.to_json())
    loaded = ModelCard.load(tmp_path / "modelcard.json")
    assert loaded == card and loaded.version == 2
    loaded.verify(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"abc" * 99)
    with pytest.raises(IntegrityError, match="truncated"):
        loaded.verify(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"abd" * 100)
    with pytest.raises(IntegrityError, match="does not match"):
        loaded.verify(tmp_path)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        loaded.verify(tmp_path)


def test_model_card_v1_migrates():
    v1 = {"version": 1, "name": "old", "sha256": {"model.safetensors": "ab" * 32}, "config": {"d_model": 8}}
    card = ModelCard.from_dict(v1)
    assert card.version == 2 and card.files["model.safetensors"].sha256 == "ab" * 32
    assert card_v1_to_v2(v1)["lineage"] == [] and "sha256" not in card_v1_to_v2(v1)
    with pytest.raises(ConfigError, match="version 3"):
        ModelCard.from_dict({"version": 3, "name": "x"})


def test_plugin_resolver_lists_valid_names():
    with pytest.raises(PluginError, match="valid names"):
        resolve("lmstack.nothing_here", "x")
    assert resolve("lmstack.nothing_here", "x", extra={"x": 1}) == 1
    with pytest.raises(PluginError, match="did you mean 'alpha'"):
        resolve("lmstack.nothing_here", "alpah", extra={"alpha": 1})
    assert available("lmstack.nothing_here") == []
    assert selected("lmstack.nothing_here", None) == []
    with pytest.raises(PluginError):
        selected("lmstack.nothing_here", ("x",))


def test_metadata_validation(tmp_path):
    good = {"metadata_version": 1, "run": "r", "step": 3, "data": {"shards": [{"path": "a", "sha256": "b"}]}}
    assert validate_metadata(good)["step"] == 3
    with pytest.raises(ConfigError) as e:
        validate_metadata({**good, "data": {"shards": [{"path": "a"}]}})
    assert e.value.path == "metadata.data.shards[0].sha256"
    with pytest.raises(ConfigError) as e:
        validate_metadata({**good, "step": "3"})
    assert e.value.path == "metadata.step"
    p = tmp_path / "m.json"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_metadata(p)
    p.write_text(json.dumps(good))
    assert load_metadata(p)["run"] == "r"


def test_protocols_are_runtime_checkable():
    class Tok:
        vocab_size, bos_id, eos_id, pad_id = 3, None, None, None

        def encode(self, text, *, add_bos=False, add_eos=False):
            return []

        def decode(self, ids, *, skip_special_tokens=True):
            return ""

        def encode_batch(self, texts, *, add_bos=False, add_eos=False):
            return []

        def fingerprint(self):
            return ""

    assert isinstance(Tok(), Tokenizer) and not isinstance(Tok(), KVCache) and not isinstance(Tok(), LanguageModel)


def test_cli_check_prints_and_errors_exit_2(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {d_model: 64, n_heads: 4, n_layers: 2, d_ff: 128, vocab_size: 256}\n")
    out = subprocess.run(
        [sys.executable, "-m", "specs", "check", str(p), "--dist.strategy", "DDP"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "strategy: DDP" in out.stdout and "schema_version: 2" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "specs", "check", str(p), "--dist.strategy", "XYZ"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "dist.strategy" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_check_of_a_fine_tuning_config_points_at_train_run(tmp_path):
    """A config with train.init_from and no model section (train.run fills it from the directory): check says so
    instead of only "required field missing"."""
    from specs.cli import _main, main

    p = tmp_path / "ft.yaml"
    p.write_text("data: {seq_len: 32}\ntrain: {init_from: some/model}\n")
    bare = tmp_path / "bare.yaml"
    bare.write_text("data: {seq_len: 32}\n")
    for args in ([str(p)], [str(bare), "--train.init_from", "some/model"]):
        with pytest.raises(ConfigError, match=r"model: missing here: a run with train.init_from .* --print-config"):
            _main(["check", *args])
    assert main(["check", str(bare)]) == 2  # without init_from: the plain missing-field error


def test_specs_imports_without_torch():
    code = "import sys, specs, specs.io, specs.cli, specs.metadata; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_config_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError("a.b", "bad")))
    assert isinstance(e, ConfigError) and e.path == "a.b" and str(e) == "a.b: bad"
