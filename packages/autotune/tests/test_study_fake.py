"""The runner against a fake trainer (tests/conftest.py): pruning terminates the process, resume runs only the
missing trials, failures keep their error, the grid is walked exactly, and parallel trials overlap. Each result is
compared with what Optuna's own storage says."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune import AutotuneError, grid_points, load_spec, run_study
from autotune.__main__ import main


def _dir(res, number: int) -> Path:
    return res.out_dir / "trials" / str(number)


def test_median_pruner_terminates_a_bad_curve(fake, tmp_path):
    doc = fake(trials=3, overrides={"fake.steps": 6, "fake.delay": 0.05},
               pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
               enqueue=[{"fake.offset": 0.0}, {"fake.offset": 0.5}, {"fake.offset": 5.0}])
    doc["space"] = {"fake.offset": {"float": {"low": 0.0, "high": 5.0}}}
    res = run_study(doc, tmp_path / "out")
    assert [t.state for t in res.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [t.params["fake.offset"] for t in res.trials] == [0.0, 0.5, 5.0]
    assert res.trials[0].value == pytest.approx(0.0 + 10 / 6)
    bad = res.trials[2]
    assert not (_dir(res, 2) / "finished").exists() and (_dir(res, 0) / "finished").exists()
    assert bad.user_attrs["returncode"] == -15  # it died of our SIGTERM, and before logging its whole curve
    study = res.load_study()
    frozen = study.trials[2]
    # pruned at its first report, 15 > the median of the finished curves at step 1 (10, 10.5)
    assert frozen.intermediate_values == {1: 15.0} and frozen.state == optuna.trial.TrialState.PRUNED
    assert study.best_value == res.best_value == res.trials[0].value


def test_resume_runs_only_the_missing_trials(fake, tmp_path):
    doc = fake(trials=2)
    out = tmp_path / "out"
    first = run_study(doc, out)
    assert [t.state for t in first.trials] == ["COMPLETE", "COMPLETE"]
    # a runner killed mid-trial leaves it RUNNING in the storage
    optuna.load_study(study_name="fake", storage=first.storage).ask()
    res = run_study(doc, out, trials=4)
    states = [(t.number, t.state, bool(t.user_attrs.get("interrupted"))) for t in res.trials]
    assert states == [(0, "COMPLETE", False), (1, "COMPLETE", False), (2, "FAIL", True), (3, "COMPLETE", False),
                      (4, "COMPLETE", False)]
    for n in (0, 1, 3, 4):  # each trial's process started exactly once
        assert len((_dir(res, n) / "starts").read_text().split()) == 1
    assert [t.params for t in res.trials[:2]] == [t.params for t in first.trials]
    assert len({t.params["fake.offset"] for t in res.trials if t.params}) == 4  # the re-seeded sampler drew anew
    assert run_study(doc, out, trials=4).trials == res.trials  # nothing left to do
    (out / "spec.json").unlink()
    with pytest.raises(AutotuneError, match="another space"):
        run_study({**doc, "space": {"fake.offset": {"float": {"low": 0.0, "high": 2.0}}}}, out)


def test_failed_and_non_finite_trials(fake, tmp_path):
    res = run_study(fake(trials=1, overrides={"fake.exit": 2}), tmp_path / "a")
    (t,) = res.trials
    assert (t.state, t.value, t.user_attrs["returncode"]) == ("FAIL", None, 2)
    assert "exit code 2" in t.error and "error: fake.exit: asked to fail" in t.error
    assert "error: fake.exit" in (_dir(res, 0) / "train.log").read_text()
    assert res.best is None and not (tmp_path / "a" / "best.json").exists()

    res = run_study(fake(trials=1, overrides={"fake.value": "nan"}), tmp_path / "b")
    assert res.trials[0].state == "FAIL" and "is nan" in res.trials[0].error
    res = run_study(fake(trials=1, overrides={"fake.tag": "eval/loss"}), tmp_path / "c")
    assert res.trials[0].state == "FAIL" and "'loss' was never logged" in res.trials[0].error
    assert "eval/loss, lr" in res.trials[0].error


def test_timeout_stops_starting_trials(fake, tmp_path):
    start = time.monotonic()
    res = run_study(fake(trials=None, timeout_s=0.4, overrides={"fake.steps": 5, "fake.delay": 0.05}), tmp_path / "o")
    assert 1 <= len(res.trials) <= 3 and {t.state for t in res.trials} == {"COMPLETE"}
    assert time.monotonic() - start < 0.4 + 2.0  # the last trial started before the deadline, then finished


def test_grid_walks_exactly_the_grid(fake, tmp_path, capsys):
    doc = fake(sampler="grid", trials=None, objective={"metric": "loss", "direction": "maximize", "reduce": "min"},
               space={"fake.offset": {"float": {"low": 0.1, "high": 0.3, "step": 0.1}},
                      "fake.kind": {"categorical": ["a", "b"]}}, overrides={"fake.steps": 2})
    (tmp_path / "grid.yaml").write_text(json.dumps(doc))
    assert main(["run", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("trial ") for line in lines) == 6 and lines[-2].startswith("best: trial")
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    ran = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    assert ran == sorted(tuple(sorted(p.items())) for p in grid_points(load_spec(doc)))
    assert study.best_value == pytest.approx(0.3 + 10 / 2)  # maximize the min over steps (the last, 10/2)
    argv = json.loads((tmp_path / "out" / "trials" / "0" / "argv.json").read_text())["argv"]
    assert argv[argv.index("--fake.offset") + 1] in ("0.1", "0.2", "0.3")


def test_parallel_trials_overlap_on_their_own_devices(fake, tmp_path):
    doc = fake(trials=4, parallel=2, devices=["3", "5"], overrides={"fake.steps": 5, "fake.delay": 0.08})
    res = run_study(doc, tmp_path / "out")
    assert [t.state for t in res.trials] == ["COMPLETE"] * 4
    spans = []
    for t in res.trials:
        d = _dir(res, t.number)
        start, end = float((d / "starts").read_text()), float((d / "end").read_text())
        spans.append((start, end, json.loads((d / "argv.json").read_text())["device"]))
        assert spans[-1][2] == t.user_attrs["device"]
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping and all(a[2] != b[2] for a, b in overlapping)  # concurrent trials never share a device
    for s in spans:  # never more than two at once
        assert sum(o[0] <= s[0] < o[1] for o in spans) <= 2
    # trials.csv is Optuna's trials_dataframe, column for column
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    df = res.load_study().trials_dataframe()
    assert [int(r["number"]) for r in rows] == df["number"].tolist()
    assert [r["state"] for r in rows] == df["state"].tolist()
    assert [float(r["value"]) for r in rows] == df["value"].tolist()
    assert [float(r["params_fake.offset"]) for r in rows] == df["params_fake.offset"].tolist()
    assert all(math.isclose(float(r["duration_s"]), d.total_seconds()) for r, d in zip(rows, df["duration"]))


def test_sigterm_to_the_runner_terminates_its_trials(fake, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(fake(trials=3, overrides={"fake.steps": 100, "fake.delay": 0.1})))
    out = tmp_path / "out"
    runner = subprocess.Popen([sys.executable, "-m", "autotune", "run", str(tmp_path / "s.json"), "--out", str(out)],
                              stderr=subprocess.PIPE, text=True)
    argv = out / "trials" / "0" / "argv.json"
    deadline = time.monotonic() + 30
    while not argv.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(30) == 130 and "interrupted" in runner.stderr.read()
    with pytest.raises(ProcessLookupError):  # the trial's process is gone, not orphaned
        os.kill(json.loads(argv.read_text())["pid"], 0)
    (t,) = optuna.load_study(study_name="fake", storage=f"sqlite:///{out / 'study.db'}").trials
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["interrupted"] is True
    assert t.user_attrs["returncode"] == -15 and not (out / "trials" / "0" / "finished").exists()


def test_several_objectives_keep_their_pareto_front(fake, tmp_path, capsys):
    """loss falls with fake.offset and cost rises as it falls (plus fake.extra, which only hurts): over the grid,
    the Pareto front is every offset with extra 0, as Optuna's best_trials and a brute-force check say."""
    doc = fake(objective=None, objectives=[{"metric": "loss"}, {"metric": "cost", "reduce": "max"}], sampler="grid",
               trials=None, space={"fake.offset": {"categorical": [0.0, 1.0, 2.0]},
                                   "fake.extra": {"categorical": [0.0, 3.0]}})
    doc = {k: v for k, v in doc.items() if v is not None}
    out = tmp_path / "out"
    res = run_study(doc, out)
    assert res.multi and res.best is None and len(res.trials) == 6
    assert all(t.state == "COMPLETE" for t in res.trials)
    for t in res.trials:
        off, extra = t.params["fake.offset"], t.params["fake.extra"]
        assert t.values == pytest.approx((off + 10 / 5, 5 - off + extra))  # the last loss, the largest cost
    dominated = {t.number for t in res.trials for u in res.trials
                 if all(a <= b for a, b in zip(u.values, t.values)) and u.values != t.values}
    want = sorted(t.number for t in res.trials if t.number not in dominated)
    assert [t.number for t in res.pareto] == want
    assert {t.params["fake.extra"] for t in res.pareto} == {0.0} and len(want) == 3
    assert sorted(t.number for t in res.load_study().best_trials) == want
    pareto = json.loads((out / "pareto.json").read_text())
    assert [t["number"] for t in pareto["trials"]] == want and not (out / "best.json").exists()
    assert pareto["objectives"] == [{"metric": "loss", "direction": "minimize"},
                                    {"metric": "cost", "direction": "minimize"}]
    assert pareto["trials"][0]["command_line"].endswith(f"--train.out_dir {out}/trials/{want[0]}")
    head = (out / "trials.csv").read_text().splitlines()[0]
    assert head.startswith("number,state,value_loss,value_cost,duration_s")
    assert main(["best", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # a command a Pareto trial
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "minimize loss, minimize cost; * the Pareto front (3 trials)" in shown[0]
    assert [line.split()[1] for line in shown[2:5]] == ["COMPLETE*"] * 3  # the front first
    with pytest.raises(AutotuneError, match="another space, objective"):  # the same study, one objective now
        run_study(fake(trials=1), out)
    (tmp_path / "multi.json").write_text(json.dumps(doc))
    assert main(["run", str(tmp_path / "multi.json"), "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front: 3 trials (pareto.json)" in printed and "loss=2 cost=5" in printed
