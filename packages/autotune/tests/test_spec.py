"""The study document's validation (errors name the field path) and the space's override strings, which must parse
back through specs' own override parser (what train.run uses) to exactly the sampled value."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from conftest import DEBUG_CFG
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune import format_override, grid_points, load_spec, override_args, parse_spec
from autotune.space import distributions, grid
from autotune.spec import check_config
from specs.config import RunConfig
from specs.errors import ConfigError
from specs.io import load_config
from specs.schema import field_type, parse_value

GOOD = {"schema_version": 1, "name": "s", "config": str(DEBUG_CFG), "objective": {"metric": "eval/loss"},
        "overrides": {"train.eval_every": 5}, "trials": 3,
        "space": {"train.lr": {"float": {"low": 1e-4, "high": 1e-2, "log": True}},
                  "train.warmup_steps": {"int": {"low": 0, "high": 10}},
                  "model.d_ff": {"categorical": [128, 172]}}}


def with_(**changes):
    doc = {**GOOD, **changes}
    return {k: v for k, v in doc.items() if v is not ...}


BAD = [  # (document, the path the error names, a fragment of its message)
    (with_(schema_version=2), "schema_version", "expected 1"),
    (with_(name=...), "name", "required"),
    (with_(objective={"metric": "loss", "direction": "up"}), "objective.direction", "'minimize' or 'maximize'"),
    (with_(objective={"metric": "loss", "reduce": "mean"}), "objective.reduce", "'last', 'min' or 'max'"),
    (with_(objective={"metric": "loss", "mode": "min"}), "objective.mode", "valid: metric, direction, reduce"),
    (with_(space={"train.lr": {"float": {"low": 1e-2, "high": 1e-4}}}), "space.train.lr.float", "low < high"),
    (with_(space={"train.lr": {"float": {"low": 0.0, "high": 1.0, "log": True}}}), "space.train.lr.float", "low > 0"),
    (with_(space={"train.lr": {"float": {"low": 1e-4, "high": 1.0, "log": True, "step": 0.1}}}),
     "space.train.lr.float", "cannot be combined"),
    (with_(space={"train.lr": {"float": {"low": "a", "high": 1.0}}}), "space.train.lr.float.low", "valid number"),
    (with_(space={"train.lr": {"float": {"low": 0.1, "hi": 1.0}}}), "space.train.lr.float.hi", "did you mean 'high'"),
    (with_(space={"train.steps": {"int": {"low": 1, "high": 5, "step": 0}}}), "space.train.steps.int.step",
     "greater than 0"),
    (with_(space={"model.d_ff": {"categorical": []}}), "space.model.d_ff.categorical", "at least one choice"),
    (with_(space={"model.d_ff": {"categorical": [1, [2]]}}), "space.model.d_ff.categorical", "choice 1 is a list"),
    (with_(space={"model.d_ff": {"categorical": [1, 1]}}), "space.model.d_ff.categorical", "repeated"),
    (with_(space={"model.d_ff": {"int": {"low": 1, "high": 2}, "categorical": [1]}}), "space.model.d_ff",
     "exactly one of float, int, categorical"),
    (with_(space={"model.d_ff": {"uniform": [1, 2]}}), "space.model.d_ff", "exactly one of"),
    (with_(space={}), "space", "at least one parameter"),
    (with_(space={"lr": {"categorical": [1]}}), "space.lr", "dotted config path"),
    (with_(space={"train.out_dir": {"categorical": ["a"]}}), "space.train.out_dir", "set by the runner"),
    (with_(overrides={"train.lr": 0.1}, space={"train.lr": {"categorical": [0.1]}}), "space.train.lr",
     "also fixed in overrides"),
    (with_(sampler="cmaes"), "sampler", "expected one of 'tpe', 'random', 'grid', 'nsga2', got 'cmaes'"),
    (with_(pruner={"n_warmup_steps": 3}), "pruner", "(missing 'type')"),
    (with_(sampler={"type": "tpe", "n_startup": 3}), "sampler.n_startup", "valid: type, n_startup_trials"),
    (with_(sampler="grid"), "space.train.lr.float.step", "grid sampler needs a step"),
    (with_(pruner={"type": "median", "n_warmup_steps": -1}), "pruner.n_warmup_steps", "greater than or equal to 0"),
    (with_(pruner={"type": "asha", "reduction_factor": 1}), "pruner.reduction_factor", "greater than or equal to 2"),
    (with_(trials=0), "trials", "greater than or equal to 1"),
    (with_(trials=None), "trials", "set trials"),
    (with_(parallel=0), "parallel", "greater than or equal to 1"),
    (with_(enqueue=[{"train.lr": 1e-3, "train.beta": 1}]), "enqueue.0.train.beta", "not a searched path"),
    (with_(enqueue=[{"train.lr": 1.0}]), "enqueue.0.train.lr", "outside the space"),
    (with_(enqueue=[{"model.d_ff": 100}]), "enqueue.0.model.d_ff", "outside the space"),
    (with_(storage=["a"]), "storage", "valid string"),
    (with_(extra=1), "extra", "unknown field"),
    (with_(objective=...), "objective", "one of the two is required"),
    (with_(objectives=[{"metric": "loss"}, {"metric": "eval/loss"}]), "objective", "not both"),
    (with_(objective=..., objectives=[{"metric": "loss"}]), "objectives", "at least 2 items"),
    (with_(objective=..., objectives=[{"metric": "loss"}, {"metric": "loss", "direction": "maximize"}]),
     "objectives.1.metric", "'loss' is already objective 0"),
    (with_(objective=..., objectives=[{"metric": "loss"}, {"metric": "tps", "direction": "up"}]),
     "objectives.1.direction", "'minimize' or 'maximize'"),
    (with_(objective=..., objectives=[{"metric": "loss"}, {"metric": "tps"}], pruner="median"), "pruner",
     "prunes single-objective studies only"),
    (with_(sampler={"type": "nsga2", "population_size": 1}), "sampler.population_size", "greater than or equal to 2"),
]


@pytest.mark.parametrize(("doc", "path", "fragment"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_documents_name_the_path(doc, path, fragment):
    with pytest.raises(ConfigError) as info:
        parse_spec(doc)
    assert info.value.path == path, str(info.value)
    assert fragment in info.value.message, str(info.value)


def test_good_document_and_yaml_quirks(tmp_path):
    # PyYAML reads 1e-4 (no mantissa dot) as a string; pydantic's float coercion takes it
    text = yaml.safe_dump({**GOOD, "config": "cfg.yaml", "storage": "db/s.db"}).replace("0.0001", "1e-4")
    assert "1e-4" in text
    (tmp_path / "cfg.yaml").write_text(DEBUG_CFG.read_text())
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml", cwd=tmp_path, trials=7)
    assert spec.space["train.lr"].float_.low == 1e-4 and spec.trials == 7
    assert spec.config == str(tmp_path / "cfg.yaml") and spec.storage == str(tmp_path / "db" / "s.db")
    assert (spec.sampler.type, spec.pruner.type, spec.parallel, spec.objective.reduce) == ("tpe", "none", 1, "last")
    check_config(spec)
    with pytest.raises(ConfigError, match="base config file not found") as info:
        load_spec({**GOOD, "config": "nope.yaml"}, cwd=tmp_path)
    assert info.value.path == "config"


@pytest.mark.parametrize(("changes", "path", "fragment"), [
    ({"space": {"train.lr_max": {"categorical": [1.0]}}}, "space.train.lr_max", "unknown field of TrainConfig"),
    ({"overrides": {"train.eval_every": 0}}, "objective.metric", "train.eval_every > 0"),
    ({"overrides": {"train.eval_every": 5, "viz.backend": "jsonl"}}, "overrides.viz.backend", "must include 'csv'"),
    ({"overrides": {"train.eval_every": 5, "train.steps": -3}}, "overrides.train.steps", "does not load"),
])
def test_check_config_against_runconfig(changes, path, fragment):
    spec = load_spec({**GOOD, **changes})
    with pytest.raises(ConfigError) as info:
        check_config(spec)
    assert info.value.path == path and fragment in info.value.message, str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_through_the_override_parser(x):
    text = format_override(x)
    assert isinstance(yaml.safe_load(text), float)  # a YAML float, not the string '1e-05'
    back = parse_value(text, field_type(RunConfig, "train.lr"))
    assert back == x and math.copysign(1, back) == math.copysign(1, x)


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false"), (None, "null"), (3, "3"),
                                             (1e-05, "1.0e-05"), (0.003, "0.003"), (2.0, "2.0"), ("FSDP", "FSDP"),
                                             (["csv", "jsonl"], "csv,jsonl")])
def test_override_strings(value, text):
    assert format_override(value) == text


def test_override_args_load_into_the_run_config():
    values = {"train.lr": 1e-05, "train.compile": True, "train.warmup_steps": 7, "model.d_ff": 96,
              "viz.backend": ["csv", "jsonl"], "train.min_lr_ratio": 0.0, "train.weight_decay": 1.5e-300}
    args = override_args(values)
    assert args[:2] == ["--train.lr", "1.0e-05"] and "--train.compile" in args and args[args.index(
        "--train.compile") + 1] == "true"
    cfg = load_config(DEBUG_CFG, RunConfig, args)
    assert (cfg.train.lr, cfg.train.compile, cfg.train.warmup_steps, cfg.model.d_ff, cfg.viz.backend,
            cfg.train.min_lr_ratio, cfg.train.weight_decay) == (1e-05, True, 7, 96, ("csv", "jsonl"), 0.0, 1.5e-300)
    assert override_args({"x.y": -1}) == ["--x.y=-1"]  # not read as an option
    with pytest.raises(ConfigError, match="non-finite"):
        format_override(math.nan)


def test_distributions_and_grid():
    spec = parse_spec({**GOOD, "sampler": "grid", "trials": None,
                       "space": {"a.x": {"float": {"low": 0.1, "high": 0.3, "step": 0.1}},
                                 "a.n": {"int": {"low": 2, "high": 8, "step": 3}},
                                 "a.c": {"categorical": ["p", None, True]}}})
    d = distributions(spec)
    assert d["a.x"] == optuna.distributions.FloatDistribution(0.1, 0.3, step=0.1)
    assert d["a.n"] == optuna.distributions.IntDistribution(2, 8, step=3)
    assert grid(spec) == {"a.x": [0.1, 0.2, 0.3], "a.n": [2, 5, 8], "a.c": ["p", None, True]}
    points = grid_points(spec)
    assert len(points) == 27 and len({tuple(p.items()) for p in points}) == 27


def test_several_objectives():
    spec = parse_spec(with_(objective=..., objectives=[{"metric": "eval/loss"},
                                                       {"metric": "perf/tokens_per_s", "direction": "maximize",
                                                        "reduce": "max"}], sampler="nsga2"))
    assert spec.multi and [(g.metric, g.direction, g.reduce) for g in spec.goals] == [
        ("eval/loss", "minimize", "last"), ("perf/tokens_per_s", "maximize", "max")]
    assert not parse_spec(GOOD).multi and parse_spec(GOOD).goals == [parse_spec(GOOD).objective]


def test_samplers_and_pruners_are_optunas():
    from autotune.study import make_pruner, make_sampler

    spec = parse_spec({**GOOD, "sampler": {"type": "tpe", "n_startup_trials": 3}, "seed": 5,
                       "pruner": {"type": "asha", "min_resource": 2, "reduction_factor": 3}})
    pruner = make_pruner(spec)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (2, 3)
    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)
    nsga = make_sampler(parse_spec({**GOOD, "sampler": {"type": "nsga2", "population_size": 8}}))
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 8
    assert isinstance(make_pruner(parse_spec({**GOOD, "pruner": "median"})), optuna.pruners.MedianPruner)
    # the random sampler of a resumed study is re-seeded past the draws the first run made
    a, b = (make_sampler(parse_spec({**GOOD, "sampler": "random"}), offset) for offset in (0, 2))
    dist = optuna.distributions.FloatDistribution(0, 1)
    draw = [s.sample_independent(None, None, "x", dist) for s in (a, b)]
    assert draw[0] != draw[1]
