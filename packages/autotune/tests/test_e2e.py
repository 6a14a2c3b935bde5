"""A real study: lmstack's trainer on cfgs/debug.yaml, a few steps per trial. Its best.json command, re-run,
reproduces the best objective bit for bit (training is deterministic on CPU); its outputs agree with Optuna's
storage; a trial whose config fails (exit 2) is recorded with train's error text."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import threading

import optuna
import pytest
from conftest import DEBUG_CFG

from autotune import format_override, run_study
from autotune.__main__ import main
from autotune.scalars import ScalarTail

if importlib.util.find_spec("train") is None:  # find_spec: importing train here would cost seconds of torch
    pytest.skip("lmstack-train is not installed", allow_module_level=True)

TINY = {"train.steps": 6, "train.eval_every": 3, "train.eval_steps": 1, "train.ckpt_every": 0,
        "train.ckpt_final": False, "train.log_every": 3}


def doc(name, space, trials, **fields):
    return {"schema_version": 1, "name": name, "config": str(DEBUG_CFG), "overrides": TINY, "space": space,
            "objective": {"metric": "eval/loss", "direction": "minimize"}, "trials": trials, "seed": 3, **fields}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The e2e study (3 trials at once) and, beside it, a failing one."""
    base = tmp_path_factory.mktemp("e2e")
    good = doc("tune", {"train.lr": {"float": {"low": 1e-3, "high": 1e-2, "log": True}},
                        "train.warmup_steps": {"int": {"low": 0, "high": 3}},
                        "model.d_ff": {"categorical": [96, 172]}}, 3, parallel=3, poll_s=0.1)
    bad = doc("bad", {"model.n_heads": {"categorical": [3]}}, 1, poll_s=0.1)  # d_model 64 is not divisible by 3
    out = {}
    t = threading.Thread(target=lambda: out.__setitem__("bad", run_study(bad, base / "bad")))
    t.start()
    out["good"] = run_study(good, base / "good")
    t.join()
    return out


def test_best_command_reproduces_the_best_trial(studies, tmp_path):
    res = studies["good"]
    assert [t.state for t in res.trials] == ["COMPLETE"] * 3
    best = json.loads((res.out_dir / "best.json").read_text())
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{res.out_dir / 'study.db'}")
    assert (best["number"], best["value"], best["params"]) == (study.best_trial.number, study.best_value,
                                                               study.best_params)
    argv = list(best["command"])
    assert argv[argv.index("--train.lr") + 1] == format_override(study.best_params["train.lr"])
    argv[argv.index("--train.out_dir") + 1] = str(tmp_path / "again")
    subprocess.run(argv, check=True, capture_output=True)
    rows = ScalarTail(tmp_path / "again" / "logs" / "scalars.csv", "eval/loss").poll()
    assert [s for s, _ in rows] == [3, 6] and rows[-1][1] == best["value"]  # bit for bit


def test_trials_csv_is_optunas_dataframe(studies):
    res = studies["good"]
    rows = list(csv.DictReader((res.out_dir / "trials.csv").open()))
    df = res.load_study().trials_dataframe()
    assert [int(r["number"]) for r in rows] == df["number"].tolist()
    assert [float(r["value"]) for r in rows] == df["value"].tolist()
    for path in ("train.lr", "train.warmup_steps", "model.d_ff"):
        assert [float(r[f"params_{path}"]) for r in rows] == df[f"params_{path}"].astype(float).tolist()
    for t in res.trials:  # each trial's own logs agree with what was told to Optuna
        rows = ScalarTail(res.out_dir / "trials" / str(t.number) / "logs" / "scalars.csv", "eval/loss").poll()
        assert rows[-1][1] == t.value and res.load_study().trials[t.number].intermediate_values == dict(rows)


def test_failing_trial_keeps_trains_error(studies):
    (t,) = studies["bad"].trials
    assert t.state == "FAIL" and t.user_attrs["returncode"] == 2
    assert "model.n_heads: d_model=64 must be divisible by n_heads=3" in t.error
    assert "model.n_heads" in (studies["bad"].out_dir / "trials" / "0" / "train.log").read_text()


def test_cli_show_best_validate(studies, capsys, tmp_path):
    out = str(studies["good"].out_dir)
    assert main(["show", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    best = studies["good"].best
    assert lines[0].startswith("study 'tune': 3 trials (3 complete") and lines[2].split()[0] == str(best.number)
    assert main(["show", out, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [t["value"] for t in shown["trials"]] == sorted(t.value for t in studies["good"].trials)
    assert main(["best", out]) == 0
    assert capsys.readouterr().out.strip() == json.loads((studies["good"].out_dir / "best.json").read_text())[
        "command_line"]
    assert main(["best", str(studies["bad"].out_dir)]) == 2
    assert "no trial of this study has completed" in capsys.readouterr().err
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(doc("v", {"train.lr": {"float": {"low": 1e-3, "high": 1e-2}}}, 2)))
    assert main(["validate", str(spec)]) == 0
    assert "ok: study 'v'" in capsys.readouterr().out
    spec.write_text(json.dumps(doc("v", {"train.lr": {"float": {"low": 1e-3, "high": 1e-4}}}, 2)))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: space.train.lr.float: needs low < high") and len(err.splitlines()) == 1
