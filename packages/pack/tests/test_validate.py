"""``lmstack validate``: the loaders' verdict, every error at once, each on the line of its key."""

from __future__ import annotations

import json
import textwrap

import yaml
from conftest import DEBUG, ROOT, edit_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pack import cli
from pack.validate import Problem, locate, validate_file
from specs.errors import ConfigError
from specs.io import load_config

BAD = textwrap.dedent("""\
    # a config with five mistakes
    name: x
    model:
      d_model: 64
      n_heads: 4
      n_layers: two
      d_ff: 172
      vocab_size: 320
      max_seq_len: 128
      atn_impl: auto
    data:
      seq_len: 64
      batch_size: -8
    train:
      steps: 30
      lr: 1e-3
    viz:
      backend: [csv, 3]
""")


def test_every_error_on_its_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    got = [(q.line, q.column, q.path) for q in validate_file(f)]
    assert got == [(6, 3, "model.n_layers"), (10, 3, "model.atn_impl"), (13, 3, "data.batch_size"),
                   (16, 3, "train.lr"), (18, 18, "viz.backend[1]")]
    msgs = {q.path: q.message for q in validate_file(f)}
    assert "did you mean 'attn_impl'" in msgs["model.atn_impl"]
    assert "write 1.0e-3" in msgs["train.lr"]


def test_valid_files_pass_and_the_exit_status_follows(tmp_path, capsys):
    good = [str(p) for p in sorted(ROOT.glob("cfgs/*.yaml"))]
    assert all(validate_file(p) == [] for p in good)
    assert cli.main(["validate", *good]) == 0
    assert "4 files checked: all valid" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert cli.main(["validate", *good, str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith(f"{bad}:6:3: error: model.n_layers: ")
    assert "5 files checked: 1 invalid, 5 errors" in err


def test_cross_field_rule_and_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {d_model: 64, n_heads: 4, n_layers: 2, d_ff: 172, vocab_size: 320, max_seq_len: 32}\n"
                 "data:\n  seq_len: 64\n")
    [q] = validate_file(f)
    assert (q.path, q.line, q.column) == ("data.seq_len", 3, 3) and "exceeds model.max_seq_len=32" in q.message
    assert validate_file(f, overrides=["--data.seq_len", "16"]) == []
    [q] = validate_file(DEBUG, overrides=["--train.steps=-1"])
    assert q.path == "train.steps" and q.line is None  # the bad value is the override's, not the file's


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit_strategy(), min_size=1, max_size=3))
def test_valid_exactly_when_the_loader_accepts(tmp_path, debug_doc, edits):
    for (section, field), value in edits:
        debug_doc.setdefault(section, {})[field] = value
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump(debug_doc))
    try:
        load_config(f)
        ok = True
    except ConfigError as exc:
        ok, first = False, exc.path
    problems = validate_file(f)
    assert (problems == []) == ok
    if not ok:
        assert first in [q.path for q in problems]
        assert all(q.line is not None for q in problems if q.path.split(".")[0] in debug_doc
                   and q.path in {f"{s}.{k}" for (s, k), _ in edits})


def test_fine_tuning_config_without_a_model(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    f = tmp_path / "ft.yaml"
    f.write_text("data: {seq_len: 64}\ntrain:\n  init_from: base\n  lora: {r: 8}\n")
    assert validate_file(f) == []  # relative to the file when not to the working directory
    f.write_text("data: {seq_len: 64}\ntrain:\n  init_from: nowhere\n  lr: -1.0\n")
    got = {q.path: q for q in validate_file(f)}
    assert "directory not found: nowhere" in got["train.init_from"].message and got["train.init_from"].line == 3
    assert got["train.lr"].line == 4
    f.write_text("data: {seq_len: 64}\ntrain: {init_from: 'registry:tiny@production'}\n")
    assert validate_file(f) == []  # a source is resolved when the run starts


def test_syntax_errors_and_odd_files(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("model:\n  d_model: [64,\n")
    [q] = validate_file(f)
    assert q.message.startswith("not valid YAML") and q.line == 3
    j = tmp_path / "c.json"
    j.write_text('{"model": {"d_model": 64,\n "n_heads": }}')
    [q] = validate_file(j)
    assert q.message.startswith("not valid JSON") and q.line == 2
    j.write_text(json.dumps(yaml.safe_load(DEBUG.read_text()) | {"train": {"steps": 0}}, indent=1))
    [q] = validate_file(j)
    assert q.path == "train.steps" and q.line == j.read_text().splitlines().index(' "train": {') + 2
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert "expected a mapping" in validate_file(tmp_path / "list.yaml")[0].message
    assert validate_file(tmp_path / "nope.yaml")[0].message == "file not found"
    assert "not a file" in validate_file(tmp_path)[0].message


def test_policies_and_studies(tmp_path, monkeypatch):
    policy = ROOT / "packages/safety/src/safety/policies/default.yaml"
    assert validate_file(policy) == []
    bad = tmp_path / "policy.yaml"
    bad.write_text(policy.read_text().replace("action: flag", "action: shout"))
    [q] = validate_file(bad)
    assert q.path == "rules[2].action" and q.line == policy.read_text().splitlines().index("    action: flag") + 1
    monkeypatch.chdir(ROOT)  # a study's config path is relative to the working directory
    study = ROOT / "packages/autotune/examples/debug_lr.yaml"
    assert validate_file(study) == []
    text = study.read_text().replace("train.warmup_steps: {int: {low: 0, high: 10}}",
                                     "train.warmup_steps: {int: {low: 10, high: 0}}")
    s = tmp_path / "study.yaml"
    s.write_text(text)
    problems = validate_file(s)
    assert problems and problems[0].path.startswith("space.train.warmup_steps")
    assert problems[0].line == text.splitlines().index("  train.warmup_steps: {int: {low: 10, high: 0}}") + 1
    assert validate_file(s, kind="run")[0].path  # forced to the other kind: refused, not crashed


def test_locate_takes_the_longest_dotted_key():
    root = yaml.compose("space:\n  train: {x: 1}\n  train.lr:\n    float: {low: 1}\nitems:\n  - a\n  - {b: 2}\n")
    assert locate(root, "space.train.lr.float.low") == (4, 13)
    assert locate(root, "space.train.x") == (2, 11)
    assert locate(root, "items[1].b") == (7, 6)
    assert locate(root, "items.1.b") == (7, 6)
    assert locate(root, "space.missing") == (1, 1)  # the deepest mapping on the way


def test_output_formats(tmp_path, capsys):
    f = tmp_path / "bad, odd:name.yaml"
    f.write_text(BAD)
    assert cli.main(["validate", "--format", "github", str(f)]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"::error file={str(f).replace(',', '%2C').replace(':', '%3A')},line=6,col=3,")
    assert Problem("a", "p", "two\nlines: 100%").github().endswith("::p: two%0Alines: 100%25")
    assert cli.main(["validate", "--format", "json", str(f), str(DEBUG)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == 2 and doc["invalid"] == 1 and len(doc["problems"]) == 5
    assert doc["problems"][0] == {"file": str(f), "path": "model.n_layers", "line": 6, "column": 3,
                                  "message": "'two' is not of type 'integer'"}


def test_shipped_documents_validate():
    """Every YAML document the packages ship (policies, configs; not red-team suites or eval tasks) passes."""
    shipped = [p for p in ROOT.glob("packages/*/src/**/*.yaml")
               if not {"templates", "suites", "tasks"} & set(p.parts)]
    assert any(p.name == "default.yaml" for p in shipped)
    for p in shipped:
        assert validate_file(p) == [], p
