"""``lmstack new``: every template renders, its configs load and match the written schema, its scripts parse, and
the pretrain and finetune projects run end to end on a CPU; refusals, --force and names."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from pack import new
from pack.cli import main as lmstack
from pack.errors import PackError
from pack.validate import validate_file
from specs.config import RunConfig
from specs.errors import ConfigError
from specs.io import load_config

TEMPLATES = list(new.TEMPLATES)
BIN = str(Path(sys.executable).parent)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHON": sys.executable,
            "OMP_NUM_THREADS": "1", **extra}


def _script(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(path)], env=_env(**env), capture_output=True, text=True, timeout=240)


def _template_files(name: str) -> set[str]:
    """What the template directory holds, read independently of pack.new: names with .tmpl dropped."""
    root = Path(str(files("pack") / "templates"))
    out = {str(p.relative_to(root / name)) for p in (root / name).rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
    out |= set(new.TEMPLATES[name].shared)
    return {p.removesuffix(".tmpl") for p in out}


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("projects")
    return {t: (new.create(root / f"my-{t}", t), root / f"my-{t}")[1] for t in TEMPLATES}


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_renders_complete(projects: dict[str, Path], template: str) -> None:
    d = projects[template]
    written = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    assert written == _template_files(template) | {".gitignore", ".lmstack/run.schema.json"} | (
        {".lmstack/policy.schema.json"} if template == "serve" else set())
    assert not [p for p in written if p.endswith(".tmpl")]
    assert f"# my-{template}\n" in (d / "README.md").read_text()
    ignored = (d / ".gitignore").read_text().split()
    assert {"runs/", "artifacts/", "*.safetensors", ".lmstack/"} <= set(ignored)
    for p in d.rglob("*"):
        if p.is_file():
            executable = bool(p.stat().st_mode & stat.S_IXUSR)
            assert executable == p.name.endswith(".sh"), p
    assert not list(d.parent.glob(f".my-{template}.*"))  # no temporary sibling left behind


@pytest.mark.parametrize("template", TEMPLATES)
def test_configs_load_and_match_schema(projects: dict[str, Path], template: str) -> None:
    d = projects[template]
    run_schema = json.loads((d / ".lmstack" / "run.schema.json").read_text())
    configs = sorted(d.glob("*.yaml"))
    assert configs or template == "rag"  # rag's project has scripts and documents, no configs
    n_run = 0
    for cfg in configs:
        text = cfg.read_text()
        doc = yaml.safe_load(text)
        if text.startswith(new.POLICY_SCHEMA_LINE):
            from safety.policy import load_policy

            policy = load_policy(cfg)
            assert policy.rules
            jsonschema.validate(doc, json.loads((d / ".lmstack" / "policy.schema.json").read_text()))
            continue
        assert text.startswith(new.RUN_SCHEMA_LINE + "\n"), cfg
        n_run += 1
        jsonschema.validate(doc, run_schema)
        if "model" in doc:
            loaded = load_config(cfg)
        else:  # train.init_from supplies the model section at run time
            assert doc["train"]["init_from"]
            with pytest.raises(ConfigError, match="model"):
                load_config(cfg)
            loaded = load_config(cfg, overrides=[("model.d_model", "64"), ("model.n_heads", "4"),
                                                 ("model.n_layers", "1"), ("model.d_ff", "128"),
                                                 ("model.vocab_size", "320")])
        assert isinstance(loaded, RunConfig) and validate_file(cfg, check_paths=False) == []
        assert loaded.name.startswith(f"my-{template}")
    assert n_run >= (0 if template == "rag" else 1)


@pytest.mark.parametrize("template", TEMPLATES)
def test_scripts_parse(projects: dict[str, Path], template: str) -> None:
    scripts = sorted(projects[template].glob("*.sh"))
    assert scripts
    for sh in scripts:
        r = subprocess.run(["bash", "-n", str(sh)], capture_output=True, text=True)
        assert r.returncode == 0, (sh, r.stderr)
        assert sh.read_text().startswith("#!/usr/bin/env bash\n")
    for py in projects[template].glob("*.py"):
        compile(py.read_text(), str(py), "exec")


@pytest.fixture(scope="module")
def pretrained(projects: dict[str, Path]) -> Path:
    d = projects["pretrain"]
    r = _script(d / "run.sh", STEPS="2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "perplexity" in r.stdout and "==> 3. a sample" in r.stdout
    ckpts = sorted((d / "runs" / "pretrain" / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000002"]
    return ckpts[-1]


def test_pretrain_runs_end_to_end(pretrained: Path) -> None:
    assert (pretrained / "model.safetensors").stat().st_size > 0
    assert json.loads((pretrained / "config.json").read_text())["d_model"] == 64


def test_finetune_runs_end_to_end(projects: dict[str, Path], pretrained: Path) -> None:
    d = projects["finetune"]
    r = _script(d / "run.sh", BASE=str(pretrained), FT_STEPS="2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d / "artifacts" / "base").resolve() == pretrained.resolve()
    tuned = d / "runs" / "finetune" / "checkpoints" / "step_00000002"
    adapter = json.loads((tuned / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and (tuned / "adapter" / "adapter_model.safetensors").is_file()
    assert (tuned / "model.safetensors").is_file()
    state = json.loads((tuned / "trainer_state.json").read_text())
    assert state["config"]["train"]["lora"]["r"] == 8


def test_rag_builds_index_and_retrieves(projects: dict[str, Path]) -> None:
    d = projects["rag"]
    r = _script(d / "build.sh")
    assert r.returncode == 0, r.stdout + r.stderr
    scores = json.loads(r.stdout[r.stdout.index("{"):])
    assert scores["queries"] == 3 and scores["mean"]["mrr"] == 1.0  # every judged document ranks first
    q = subprocess.run(["bash", str(d / "query.sh"), "what to do when the barometer falls"], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 0 and "storm-procedure.md" in q.stdout.splitlines()[0]


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert new.run(argparse.Namespace(list=True, dir=None, template="pretrain", name=None, force=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == TEMPLATES
    assert all(len(ln.split()) > 3 for ln in lines)


def test_unknown_template_lists_valid(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="pretrain, finetune, dpo, serve, rag"):
        new.create(tmp_path / "p", "pretrian")
    assert not (tmp_path / "p").exists()


def test_refuses_non_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match="not empty"):
        new.create(d, "pretrain")
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert lmstack(["new", str(d), "--template", "pretrain"]) == 2  # the CLI: a message, no traceback
    assert "not empty" in capsys.readouterr().err


def test_empty_dir_is_used(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    new.create(d, "serve")
    assert (d / "serve.sh").is_file() and (d / "policy.yaml").is_file()


def test_force_keeps_unrelated_files(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    (d / "data").mkdir(parents=True)
    (d / "notes.txt").write_text("mine")
    (d / "data" / "extra.md").write_text("my own text")
    (d / "run.sh").write_text("old")
    written = new.create(d, "finetune", force=True)
    assert (d / "notes.txt").read_text() == "mine" and (d / "data" / "extra.md").read_text() == "my own text"
    assert (d / "run.sh").read_text().startswith("#!/usr/bin/env bash") and os.access(d / "run.sh", os.X_OK)
    assert d / "finetune.yaml" in written and (d / "data" / "lighthouse.md").is_file()
    assert "name: proj\n" in (d / "finetune.yaml").read_text()


@pytest.mark.parametrize("bad", ["", "a b", "../up", "x/y", "-dash", ".hidden", "naïve", "x" * 65, "a;rm"])
def test_bad_names_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PackError, match="project name"):
        new.create(tmp_path / "ok", "pretrain", name=bad)
    assert not (tmp_path / "ok").exists()


def test_name_defaults_to_dir_and_bad_dir_name_asks_for_name(tmp_path: Path) -> None:
    new.create(tmp_path / "good_name-1", "pretrain")
    assert "name: good_name-1\n" in (tmp_path / "good_name-1" / "config.yaml").read_text()
    with pytest.raises(PackError, match="--name"):
        new.create(tmp_path / "has space", "pretrain")
    new.create(tmp_path / "has space", "pretrain", name="fixed")
    assert "name: fixed\n" in (tmp_path / "has space" / "config.yaml").read_text()


def test_broken_template_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = new.render

    def broken(template: str, name: str) -> dict[str, bytes]:
        out = real(template, name)
        out["config.yaml"] = out["config.yaml"].replace(b"n_heads: 4", b"n_heads: 5")  # 64 % 5 != 0
        return out

    monkeypatch.setattr(new, "render", broken)
    with pytest.raises(PackError, match="config.yaml.*n_heads"):
        new.create(tmp_path / "p", "pretrain")
    assert list(tmp_path.iterdir()) == []
