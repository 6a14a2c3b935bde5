"""Policy documents: built-ins load, every error names its field path and what was expected, round trips."""

from __future__ import annotations

import json

import pytest
import yaml

from safety.guard import Guard
from safety.policy import builtin_policies, load_policy, policy_from_dict
from specs.errors import ConfigError


def doc(*rules, **top):
    return {"schema_version": 1, "name": "t", "rules": list(rules), **top}


def rule(i="r", **kw):
    return {"id": i, "detector": {"type": "keywords", "words": ["x"]}, "action": "flag", **kw}


def test_builtins_load_and_compile():
    assert builtin_policies() == ["default", "pii"]
    for name in builtin_policies():
        p = load_policy(f"builtin:{name}")
        assert p.name == name and p.rules
        Guard(p)  # the default's classifier resolves through the installed entry point


@pytest.mark.parametrize(("document", "path", "needle"), [
    (doc(rule(), rule("s"), {"id": "bad", "detector": {"type": "regex", "pattern": "(x"}, "action": "block"}),
     "rules[2].detector.pattern", "rule 'bad': bad regular expression '(x'"),
    (doc(rule(action="delete")), "rules[0].action", "'block', 'redact' or 'flag'"),
    (doc(rule(stages=["input", "middle"])), "rules[0].stages[1]", "'input', 'output' or 'tool'"),
    (doc({"id": "p", "detector": {"type": "pii", "entities": ["email", "passport"]}, "action": "redact"}),
     "rules[0].detector.entities[1]", "'email'"),
    (doc({"id": "d", "detector": {"type": "nsfw"}, "action": "block"}), "rules[0].detector", "regex"),
    (doc({"id": "l", "detector": {"type": "length"}, "action": "block"}), "rules[0].detector.max_chars",
     "Field required"),
    (doc(rule(colour="red")), "rules[0].colour", "Extra inputs are not permitted"),
    (doc({"id": "k", "detector": {"type": "keywords", "words": ["ok", " "]}, "action": "flag"}),
     "rules[0].detector.words", "words[1] is blank"),
    (doc({"id": "c", "detector": {"type": "classifier", "name": "x", "threshold": 2}, "action": "flag"}),
     "rules[0].detector.threshold", "less than or equal to 1"),
    (doc(rule("same"), rule("same")), "rules[1].id", "duplicate rule id 'same' (also rules[0].id)"),
    ({"name": "t", "rules": []}, "schema_version", "missing; expected 1"),
    ({"schema_version": 2, "name": "t"}, "schema_version", "unsupported version 2"),
    (doc(max_entity_chars=2), "max_entity_chars", "greater than or equal to 8"),
    ([1, 2], "", "expected a mapping"),
])
def test_errors_name_the_path(document, path, needle):
    with pytest.raises(ConfigError) as info:
        policy_from_dict(document)
    assert info.value.path == path
    assert needle in info.value.message, info.value.message


def test_counts_further_errors():
    with pytest.raises(ConfigError, match=r"\(and 2 more errors\)"):
        load_policy(doc(rule(action="nope"), rule("s", stages=["x"])))


def test_files_yaml_json_and_save_round_trip(tmp_path):
    p = load_policy("builtin:default")
    for name in ("p.yaml", "p.json"):
        path = p.save(tmp_path / name)
        assert load_policy(path) == p
        assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    assert json.loads((tmp_path / "p.json").read_text())["schema_version"] == 1
    (tmp_path / "bad.yaml").write_text("rules: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="builtin:default, builtin:pii"):
        load_policy("builtin:nope")
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["rules"][0]["id"] == "secrets"


def test_classifier_plugins_resolve_or_list_choices():
    c = {"id": "c", "detector": {"type": "classifier", "name": "injection-heuristics"}, "action": "flag"}
    with pytest.raises(ConfigError) as info:
        Guard(doc(c))
    assert info.value.path == "rules[0].detector.name"
    assert "did you mean 'injection-heuristic'" in info.value.message and "rule 'c'" in info.value.message
    c["detector"] = {"type": "classifier", "name": "injection-heuristic", "options": {"colour": 1}}
    with pytest.raises(ConfigError) as info:
        Guard(doc(c))
    assert info.value.path == "rules[0].detector.options"
    # in-process classifiers (``extra``) take part in the same resolution
    c["detector"] = {"type": "classifier", "name": "always", "threshold": 0.7}
    g = Guard(doc(c), classifiers={"always": lambda: (lambda text: 0.75)})
    v = g.check("anything")
    assert [(f.rule, f.start, f.end, f.score) for f in v.findings] == [("c", 0, 8, 0.75)]
    g = Guard(doc(c), classifiers={"always": lambda: (lambda text: 1.5)})
    with pytest.raises(ValueError, match=r"expected a score in \[0, 1\]"):
        g.check("anything")
