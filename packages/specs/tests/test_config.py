import dataclasses
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import ConfigError, ModelConfig, RunConfig, config_from_dict, dump_config, dumps_config, load_config
from specs.config import CONFIG_CLASSES, ExportConfig, GRPOConfig, PreferenceConfig, TrainConfig, VizConfig
from specs.presets import PRESETS, preset

TINY = {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128, "vocab_size": 256}


def test_seed_model_config():
    cfg = ModelConfig(d_model=512, n_heads=8, n_layers=8, d_ff=2048, vocab_size=32000, attn_impl="flash")
    assert cfg.head_dim == 64 and cfg.kv_heads == 8 and cfg.attn_impl == "flash"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ModelConfig(512, 8, 8, 2048, 32000)  # keyword-only


def test_network_mismatches_name_what_would_not_load():
    """Fields that shape the weights or what they compute differ; how the network is run or trained may
    (RUN_FIELDS), max_seq_len too unless positions are learned; n_kv_heads compares as KV heads."""
    base = ModelConfig(**TINY, n_kv_heads=2)
    run = dataclasses.replace(base, dropout=0.1, attn_impl="sdpa", loss_impl="reference", max_seq_len=4096,
                              rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}, init_std=0.5)
    assert base.network_mismatches(run) == []
    assert ModelConfig(**TINY).network_mismatches(ModelConfig(**TINY, n_kv_heads=4)) == []  # None is n_heads
    other = dataclasses.replace(base, d_ff=256, n_kv_heads=None, tie_embeddings=True)
    assert base.network_mismatches(other) == [("d_ff", 128, 256), ("n_kv_heads", 2, 4), ("tie_embeddings", False,
                                                                                         True)]
    learned = ModelConfig(**TINY, pos_encoding="learned", mlp="mlp", norm="layernorm", activation="gelu")
    assert learned.network_mismatches(dataclasses.replace(learned, max_seq_len=64)) == [("max_seq_len", 2048, 64)]
    with pytest.raises(ConfigError, match=r"model.d_ff.*checkpoint ckpt/: model.d_ff is 256 here, 128 there; "
                                          r"model.n_kv_heads is 4 here, 2 there; .*only dropout, .* may differ"):
        base.check_same_network(other, "ckpt/")
    base.check_same_network(run, "ckpt/")


@pytest.mark.parametrize(
    "kw, path, words",
    [
        ({"d_model": 65}, "ModelConfig.n_heads", "divisible"),
        ({"n_kv_heads": 3}, "ModelConfig.n_kv_heads", "divisible"),
        ({"d_model": 0}, "ModelConfig.d_model", "greater than 0"),
        ({"dropout": 1.5}, "ModelConfig.dropout", "less than or equal to 1"),
        ({"norm": "batchnorm"}, "ModelConfig.norm", "'rmsnorm' or 'layernorm'"),
        ({"d_model": "64"}, "ModelConfig.d_model", "valid integer"),
        (
            {"pos_encoding": "alibi", "rope_scaling": {"type": "linear", "factor": 2.0}},
            "ModelConfig.rope_scaling",
            "rope",
        ),
    ],
)
def test_model_config_errors_name_the_field(kw, path, words):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{**TINY, **kw})
    assert e.value.path == path and words in str(e.value)


@pytest.mark.parametrize("value", ["x", 0, 2.5])
def test_a_union_field_error_names_every_accepted_form(value):
    """fsdp_unit_blocks is a positive int or "auto": the message lists both, not one member's complaint, and the
    path is the field's (no pydantic union tags)."""
    from specs.config import DistConfig

    with pytest.raises(ConfigError) as e:
        DistConfig(fsdp_unit_blocks=value)
    assert e.value.path == "DistConfig.fsdp_unit_blocks"
    assert f"expected int > 0 | 'auto', got {value!r}" in str(e.value)
    assert DistConfig(fsdp_unit_blocks="auto").fsdp_unit_blocks == "auto"


def test_nested_rope_scaling_from_dict_and_error_path():
    r = config_from_dict(
        {"model": {**TINY, "rope_scaling": {"type": "llama3", "factor": 8.0, "original_max_seq_len": 8192}}}
    )
    assert r.model.rope_scaling.factor == 8.0
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {**TINY, "rope_scaling": {"type": "llama3", "factor": 8.0}}})
    assert e.value.path == "model.rope_scaling.original_max_seq_len"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {**TINY, "n_layer": 3}})
    assert e.value.path == "model.n_layer" and "did you mean 'n_layers'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": TINY, "trian": {}})
    assert "did you mean 'train'" in str(e.value)


def test_missing_required_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {k: v for k, v in TINY.items() if k != "vocab_size"}})
    assert e.value.path == "model.vocab_size" and "required" in str(e.value)


def test_overrides_are_typed_by_schema():
    r = config_from_dict(
        {"model": TINY},
        overrides=[
            "--dist.strategy",
            "FSDP",
            "--dist.precision",
            "bf16",
            "--dist.grad_ckpt",
            "true",
            "--viz.backend",
            "csv",
            "--viz.profile_every_n_steps",
            "500",
            "--train.lr=1e-3",
            "--train.out_dir",
            "runs/x",
            "--model.n_kv_heads",
            "2",
            "--train.compile",
        ],
    )
    assert r.dist.strategy == "FSDP" and r.dist.precision == "bf16" and r.dist.grad_ckpt is True
    assert r.viz.backend == ("csv",) and r.viz.profile_every_n_steps == 500
    assert r.train.lr == 1e-3 and isinstance(r.train.lr, float) and r.train.out_dir == "runs/x"
    assert r.model.n_kv_heads == 2 and r.train.compile is True


def test_a_literal_choice_named_none_is_that_choice():
    r = config_from_dict({"model": TINY, "dist": {"strategy": "FSDP"}, "export": {"quantize": "int8"}},
                         overrides=["--dist.strategy", "none", "--export.quantize", "none"])
    assert r.dist.strategy == "none" and r.export.quantize == "none"
    r = config_from_dict({"model": TINY}, overrides=["--model.n_kv_heads", "null"])
    assert r.model.n_kv_heads is None


@pytest.mark.parametrize(
    "args, path",
    [
        (["--dist.strategi", "FSDP"], "dist.strategi"),
        (["--dist.strategy", "FSD"], "dist.strategy"),
        (["--train.steps", "ten"], "train.steps"),
        (["--model.d_model.x", "1"], "model.d_model"),
        (["train.steps", "1"], ""),
    ],
)
def test_bad_overrides(args, path):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": TINY}, overrides=args)
    assert e.value.path == path


def test_yaml_json_round_trip_and_schema_version(tmp_path):
    r = config_from_dict({"model": TINY, "viz": {"backend": ["csv", "tensorboard"]}})
    for name in ("run.yaml", "run.json"):
        dump_config(r, tmp_path / name)
        assert load_config(tmp_path / name) == r
    doc = yaml.safe_load(dumps_config(r))
    assert doc["schema_version"] == 2 and list(doc)[0] == "schema_version"
    assert json.loads(dumps_config(r, "json"))["viz"]["backend"] == ["csv", "tensorboard"]


def test_bad_documents(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_text("model: {d_model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory; expected a YAML or JSON config file"):
        load_config(tmp_path)
    (tmp_path / "weights.yaml").write_bytes(b"\xe4\x00\xff binary")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "weights.yaml")
    p.write_text(yaml.safe_dump({"schema_version": 99, "model": TINY}))
    with pytest.raises(ConfigError, match="version 99") as e:
        load_config(p)
    assert e.value.path == "schema_version"


def test_cross_section_check():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {**TINY, "max_seq_len": 128}, "data": {"seq_len": 256}})
    assert e.value.path == "data.seq_len"


def test_presets_build_and_unknown_lists_choices():
    for name in PRESETS:
        assert isinstance(preset(name), ModelConfig)
    assert preset("llama-1b").kv_heads == 4
    with pytest.raises(ConfigError, match="valid: "):
        preset("gpt3")


def test_seed_export_config():
    from specs.export import ExportConfig as EC

    c = EC(target="onnx", opset=19, quantize="int8", dynamic_axes=True, outdir="artifacts/")
    assert c is not None and EC is ExportConfig
    with pytest.raises(ConfigError):
        EC(opset=7)


# --- property tests -----------------------------------------------------------------------------
model_configs = st.builds(
    lambda h, kv_div, hd, layers, ff, vocab, norm, pos, tie, drop: ModelConfig(
        d_model=h * hd,
        n_heads=h,
        n_kv_heads=max(1, h // kv_div) if h % max(1, h // kv_div) == 0 else h,
        n_layers=layers,
        d_ff=ff,
        vocab_size=vocab,
        norm=norm,
        pos_encoding=pos,
        tie_embeddings=tie,
        dropout=drop,
    ),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([2, 8, 16, 64]),
    st.integers(1, 48),
    st.integers(1, 10000),
    st.integers(1, 200000),
    st.sampled_from(["rmsnorm", "layernorm"]),
    st.sampled_from(["rope", "alibi", "learned", "none"]),
    st.booleans(),
    st.floats(0, 1),
)


@settings(max_examples=60, deadline=None)
@given(
    model_configs,
    st.sampled_from(["none", "DDP", "FSDP", "ZeRO1"]),
    st.lists(st.sampled_from(["csv", "jsonl", "tensorboard", "wandb"]), min_size=1, max_size=4, unique=True),
)
def test_round_trip_property(model, strategy, backends):
    r = RunConfig(
        model=model,
        dist={"strategy": strategy},
        viz=VizConfig(backend=tuple(backends)),
        data={"seq_len": min(256, model.max_seq_len)},
    )
    assert config_from_dict(yaml.safe_load(dumps_config(r))) == r
    assert config_from_dict(json.loads(dumps_config(r, "json"))) == r


@settings(max_examples=40, deadline=None)
@given(model_configs)
def test_every_component_round_trips_alone(model):
    required = {RunConfig: {"model": model, "data": {"seq_len": 16}}, GRPOConfig: {"rewards": ("pkg.mod:fn",)}}
    for cls in CONFIG_CLASSES.values():
        cfg = model if cls is ModelConfig else cls(**required.get(cls, {}))
        assert config_from_dict(json.loads(dumps_config(cfg, "json")), cls) == cfg


def test_online_rl_and_preference_configs_are_checked():
    with pytest.raises(ConfigError, match="GRPOConfig.rewards: names at least one reward"):
        GRPOConfig()
    with pytest.raises(ConfigError, match="gives 1 weights for 2 rewards"):
        GRPOConfig(rewards=("a:f", "b:g"), reward_weights=(1.0,))
    with pytest.raises(ConfigError, match="num_generations"):
        GRPOConfig(rewards=("a:f",), num_generations=1)
    with pytest.raises(ConfigError, match="set train.preference or train.grpo, not both"):
        TrainConfig(preference=PreferenceConfig(), grpo=GRPOConfig(rewards=("a:f",)))
    with pytest.raises(ConfigError, match="label_smoothing"):
        PreferenceConfig(label_smoothing=0.5)
    cfg = config_from_dict({"model": TINY, "train": {"grpo": {"rewards": ["a:f"]}}}, RunConfig,
                           [("train.grpo.num_generations", "4"), ("train.grpo.loss_type", "grpo"),
                            ("train.grpo.rewards", "[a:f, model:/m]"), ("train.grpo.reward_weights", "[1, 0.5]")])
    assert cfg.train.grpo == GRPOConfig(rewards=("a:f", "model:/m"), reward_weights=(1.0, 0.5), num_generations=4,
                                        loss_type="grpo")
    with pytest.raises(ConfigError, match="train.steps: Input should be a valid integer"):  # not YAML: named
        config_from_dict({"model": TINY}, RunConfig, [("train.steps", "[1")])


def test_atomic_writes_refuse_directories_and_unwritable_places(tmp_path):
    from specs.io import atomic_write_bytes, atomic_write_text

    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="is a directory; expected a file path"):
        dump_config(RunConfig(model=ModelConfig(**TINY)), tmp_path / "out")
    (tmp_path / "file").write_text("kept")
    with pytest.raises(ConfigError, match="cannot write"):  # its directory would have to be a file
        atomic_write_text(tmp_path / "file" / "x.yaml", "a: 1\n")
    assert (tmp_path / "file").read_text() == "kept"
    assert atomic_write_bytes(tmp_path / "new" / "k.bin", b"\x00\x01", mode=0o640).read_bytes() == b"\x00\x01"
    assert (tmp_path / "new" / "k.bin").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "k.bin", "new", "out"]  # no temp file left
