"""One trial: a training subprocess whose metrics are read while it runs and reported to Optuna, which may prune it.

The process model is Ray Tune's function trainables run in their own processes: each trial is
``python -m train.run --config BASE <overrides> --train.out_dir <out>/trials/<n>`` in a new session, so a crash,
a leak or GPU memory stays with it. While it runs, new rows of its ``logs/scalars.csv`` are passed to
``trial.report(value, step)``; when ``trial.should_prune()`` says so the process group gets SIGTERM (train.run
saves a checkpoint and exits 128 + 15) and, after ``grace_s``, SIGKILL. This is Optuna's pruning protocol
(``optuna.TrialPruned``) with the trainer out of process.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna

from autotune.scalars import ScalarTail, reduce_values, scalars_path
from autotune.space import override_args
from autotune.spec import StudySpec

TAIL_LINES = 20  # of a failed trial's log, kept in its user attrs


@dataclass(frozen=True)
class TrialOutcome:
    state: Literal["complete", "pruned", "failed", "interrupted"]
    value: float | None = None  # the (first) objective's
    values: tuple[float, ...] = ()  # every objective's, in the spec's order (complete trials)
    returncode: int | None = None
    error: str | None = None
    reports: int = 0  # intermediate values passed to trial.report


def base_command(spec: StudySpec) -> list[str]:
    """``spec.command`` (a leading ``python`` is this interpreter, so the trial sees the same environment), or
    ``<this python> -m train.run``."""
    if spec.command is None:
        return [sys.executable, "-m", "train.run"]
    cmd = list(spec.command)
    return [sys.executable, *cmd[1:]] if cmd[0] in ("python", "python3") else cmd


def trial_command(spec: StudySpec, params: Mapping[str, Any], trial_dir: str | os.PathLike[str]) -> list[str]:
    """The argv of one trial: base config, the fixed overrides, then the sampled ones, then the trial's out_dir."""
    return [*base_command(spec), "--config", spec.config, *override_args(spec.overrides), *override_args(params),
            "--train.out_dir", str(trial_dir)]


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))  # the end of a long log is enough
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the trial's process group (torchrun's workers too), SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_trial(trial: optuna.Trial, spec: StudySpec, cmd: Sequence[str], trial_dir: Path, *,
              env: Mapping[str, str] | None = None, stop: threading.Event | None = None) -> TrialOutcome:
    """Run ``cmd``, writing its stdout and stderr to ``trial_dir/train.log``, until the process ends, the pruner stops
    it, or ``stop`` is set (interrupted). A single objective is reported to ``trial`` as it is logged (for the
    pruner); several are read at the end only (Optuna prunes single-objective studies alone)."""
    stop = stop or threading.Event()
    trial_dir.mkdir(parents=True, exist_ok=True)
    log_path = trial_dir / "train.log"
    tails = [ScalarTail(scalars_path(trial_dir), g.metric) for g in spec.goals]
    logged: list[list[tuple[int, float]]] = [[] for _ in tails]
    values = logged[0]
    last_step: int | None = None
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, start_new_session=True)
        except OSError as exc:
            return TrialOutcome("failed", error=f"cannot start {cmd[0]!r}: {exc.strerror or exc}")
        try:
            while True:
                done = proc.poll() is not None  # read once more after the exit: the last rows land just before it
                for rows, tail in zip(logged[1:], tails[1:]):
                    rows.extend(tail.poll())
                for step, value in tails[0].poll():
                    values.append((step, value))
                    if spec.multi or not math.isfinite(value) or (last_step is not None and step <= last_step):
                        continue
                    trial.report(value, step)
                    last_step = step
                    if not done and trial.should_prune():
                        terminate(proc, spec.grace_s)
                        return TrialOutcome("pruned", value=value, returncode=proc.returncode,
                                            reports=len(values))
                if done:
                    break
                if stop.wait(spec.poll_s):
                    terminate(proc, spec.grace_s)
                    return TrialOutcome("interrupted", returncode=proc.returncode, error="interrupted",
                                        reports=len(values))
        except BaseException:
            terminate(proc, spec.grace_s)
            raise
    rc = proc.returncode
    if rc != 0:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        return TrialOutcome("failed", returncode=rc, error=f"{how}; the end of {log_path}:\n{log_tail(log_path)}",
                            reports=len(values))
    results: list[float] = []
    for goal, rows, tail in zip(spec.goals, logged, tails):
        if not rows:
            seen = ", ".join(sorted(tail.tags)) or "none (no scalars.csv rows)"
            return TrialOutcome("failed", returncode=rc, error=f"the objective {goal.metric!r} was never logged to "
                                f"{tail.path}; tags logged: {seen}", reports=len(values))
        value = reduce_values(rows, goal.reduce)
        if not math.isfinite(value):
            return TrialOutcome("failed", returncode=rc, error=f"the objective {goal.metric!r} is {value} (a "
                                "non-finite value was logged)", reports=len(values))
        results.append(value)
    return TrialOutcome("complete", value=results[0], values=tuple(results), returncode=rc, reports=len(values))
