"""``lmstack schema``: a valid draft 2020-12 schema that every config the loaders accept passes."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from conftest import ROOT, edit_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pack import cli
from pack.schema import KINDS, json_schema
from specs.errors import ConfigError
from specs.io import config_from_dict

RUN = jsonschema.Draft202012Validator(json_schema("run"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_valid_schema(kind):
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")


@pytest.mark.parametrize("path", sorted(ROOT.glob("cfgs/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass(path):
    assert list(RUN.iter_errors(yaml.safe_load(path.read_text()))) == []


def test_studies_and_policies_pass():
    study = jsonschema.Draft202012Validator(json_schema("study"))
    policy = jsonschema.Draft202012Validator(json_schema("policy"))
    studies = sorted(ROOT.glob("packages/autotune/examples/*.yaml"))
    policies = sorted(ROOT.glob("packages/safety/src/safety/policies/*.yaml"))
    assert studies and policies
    for p in studies:
        assert list(study.iter_errors(yaml.safe_load(p.read_text()))) == [], p
    for p in policies:
        assert list(policy.iter_errors(yaml.safe_load(p.read_text()))) == [], p


def test_rejects_what_the_loader_rejects_by_type(debug_doc):
    cases = [("model", "n_layers", "two"), ("model", "unknown_key", 1), ("train", "lr", "1e-3"),
             ("data", "batch_size", -8), ("viz", "backend", ["csv", 3]), ("dist", "strategy", "nccl"),
             ("train", "steps", True)]
    for section, field, value in cases:
        doc = {**debug_doc, section: {**debug_doc[section], field: value}}
        with pytest.raises(ConfigError):
            config_from_dict(doc)
        assert list(RUN.iter_errors(doc)), (section, field, value)
    assert list(RUN.iter_errors({**debug_doc, "extra_section": {}}))


def test_tuple_fields_take_comma_strings_like_the_loader(debug_doc):
    doc = {**debug_doc, "viz": {**debug_doc["viz"], "backend": "csv,jsonl"}}
    assert config_from_dict(doc).viz.backend == ("csv", "jsonl")
    assert list(RUN.iter_errors(doc)) == []


def test_model_may_be_left_to_init_from(debug_doc):
    doc = {k: v for k, v in debug_doc.items() if k != "model"}
    assert list(RUN.iter_errors(doc)) == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit_strategy(), min_size=1, max_size=3))
def test_the_schema_never_refuses_what_the_loader_accepts(debug_doc, edits):
    doc = json.loads(json.dumps(debug_doc))
    for (section, field), value in edits:
        doc.setdefault(section, {})[field] = value
    try:
        config_from_dict(doc)
    except ConfigError:
        return
    assert list(RUN.iter_errors(doc)) == []


def test_cli_writes_the_schema(tmp_path, capsys):
    out = tmp_path / ".lmstack" / "run.schema.json"
    assert cli.main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema("run")
    assert cli.main(["schema", "--kind", "policy"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "lmstack-safety guardrail policy"
    assert cli.main(["schema", "--kind", "polcy"]) == 2
    assert "did you mean 'policy'" in capsys.readouterr().err
