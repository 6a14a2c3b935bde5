"""``run_study(spec, out_dir)``: an Optuna study over lmstack training runs, resumable, with its results on disk.

The study lives in Optuna's RDB storage (SQLite, ``<out>/study.db`` by default) under ``spec.name``, opened with
``load_if_exists`` as Optuna's own resumable studies are: re-running continues until ``trials`` trials have finished
(complete, pruned or failed) and never re-runs one. A trial left RUNNING by a runner that was killed is marked FAIL
(user attr ``interrupted``) when the next one starts and does not count; a lock file beside the storage guarantees
that no other runner is still driving it. Trials run through Optuna's ask-and-tell interface, ``parallel`` at once
(threads, each waiting on its own subprocess: :mod:`autotune.trial`), as ``study.optimize(n_jobs=...)`` does.

Outputs, rewritten atomically after every trial: ``<out>/best.json`` (number, value, params and the command that
reproduces the best trial) and ``<out>/trials.csv`` (every trial: number, state, value, duration, params). A study
of several ``objectives`` has no single best trial: ``<out>/pareto.json`` holds its Pareto front instead (Optuna's
``study.best_trials``: the completed trials no other beats on every objective), each with its command, and
``trials.csv`` a value column per objective.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError
from autotune.space import grid, grid_size, sample
from autotune.spec import StudySpec, check_config, load_spec, parse_spec
from autotune.trial import run_trial, trial_command
from specs.io import atomic_write_text

SPEC_ATTR = "autotune_spec"  # the study's user attr holding the spec it was created with
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the outputs show it. ``state`` is Optuna's (COMPLETE, PRUNED, FAIL, RUNNING)."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    duration_s: float | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] = ()  # every objective's value (complete trials); ``value`` is the first's

    @property
    def error(self) -> str | None:
        return self.user_attrs.get("error")

    @property
    def command(self) -> list[str] | None:
        return self.user_attrs.get("command")


@dataclass(frozen=True)
class StudyResult:
    """What a study has done so far. ``best`` is None until a trial completes."""

    name: str
    storage: str  # the SQLAlchemy URL: optuna.load_study(study_name=name, storage=storage)
    out_dir: Path
    direction: str
    metric: str
    trials: list[TrialRecord]
    best: TrialRecord | None  # None for several objectives: see ``pareto``
    metrics: tuple[str, ...] = ()  # every objective's metric and direction, in the spec's order
    directions: tuple[str, ...] = ()
    pareto: list[TrialRecord] = field(default_factory=list)  # the Pareto front (several objectives)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def best_value(self) -> float | None:
        return None if self.best is None else self.best.value

    @property
    def best_params(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best.params

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` on an exhausted grid: that call is for ``study.optimize`` and raises
    under ask-and-tell; the runner stops at the grid's size itself."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def make_sampler(spec: StudySpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    # a resumed study re-seeded with the same seed would replay the first run's random draws; shift it by the
    # number of trials already there, so the continuation is still reproducible but new
    seed = spec.seed + offset
    s = spec.sampler
    if s.type == "grid":
        return _GridSampler(grid(spec), seed=seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, crossover_prob=s.crossover_prob,
                                             swapping_prob=s.swapping_prob, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                      constant_liar=s.constant_liar)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps, n_min_trials=p.n_min_trials)
    if p.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor,
                                                      min_early_stopping_rate=p.min_early_stopping_rate)
    return optuna.pruners.NopPruner()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def storage_path(spec: StudySpec, out_dir: Path) -> Path:
    return Path(spec.storage) if spec.storage else out_dir / "study.db"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AutotuneError(f"{lock_path} is held: another run_study is driving this study") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _search_key(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: doc.get(k) for k in ("space", "objective", "objectives", "sampler")}


def _open_study(spec: StudySpec, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create or load the study; check it is the same search; fail trials a killed runner left RUNNING."""
    doc = spec.model_dump(mode="json", by_alias=True)
    try:
        old = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        old = None
    if old is not None:
        stored = old.user_attrs.get(SPEC_ATTR)
        if stored is not None and _search_key(stored) != _search_key(doc):
            raise AutotuneError(f"study {spec.name!r} in {storage.url} was created with another space, objective or "
                                "sampler; use a new --out directory (or a new name) for the changed search")
        study_id = storage.get_study_id_from_name(spec.name)
        for t in old.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "error", "interrupted: its runner stopped before it finished")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    offset = 0 if old is None else len(old.trials)
    study = optuna.create_study(storage=storage, sampler=make_sampler(spec, offset), pruner=make_pruner(spec),
                                study_name=spec.name, directions=[g.direction for g in spec.goals],
                                load_if_exists=True)
    study.set_user_attr(SPEC_ATTR, doc)
    for point in spec.enqueue:
        study.enqueue_trial(point, skip_if_exists=True)
    return study


def counts_as_finished(t: FrozenTrial) -> bool:
    return t.state in FINISHED and not t.user_attrs.get("interrupted")


def run_study(spec: StudySpec | Mapping[str, Any] | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
              trials: int | None = None, on_trial: Callable[[TrialRecord], None] | None = None) -> StudyResult:
    """Run (or continue) the study until ``trials`` trials (default ``spec.trials``; a grid's size for the grid
    sampler) have finished or ``spec.timeout_s`` has passed, then return its results. ``on_trial`` is called with
    each trial as it finishes. Ctrl-C terminates the running trials, marks them interrupted and re-raises."""
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    if trials is not None:
        spec = parse_spec({**spec.model_dump(by_alias=True, exclude_none=True), "trials": trials})
    check_config(spec)
    out = Path(out_dir).resolve()
    db = storage_path(spec, out)
    target = spec.trials if spec.trials is not None else (grid_size(spec) if spec.sampler.type == "grid" else None)
    if spec.sampler.type == "grid":
        target = min(target or grid_size(spec), grid_size(spec))  # past the grid, GridSampler would repeat points
    with _exclusive(db.with_name(db.name + ".lock")):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "spec.json", json.dumps({**spec.model_dump(mode="json", by_alias=True),
                                                         "storage": str(db)}, indent=2) + "\n")
        url = sqlite_url(db)
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        study = _open_study(spec, storage)
        _Driver(spec, study, out, url, target, on_trial).run()
        return write_outputs(study, spec, out, url)


class _Driver:
    """``parallel`` worker threads, each asking for a trial, running it and telling its result, until enough have
    finished; the first error in a worker stops the others and is re-raised."""

    def __init__(self, spec: StudySpec, study: optuna.Study, out: Path, url: str, target: int | None,
                 on_trial: Callable[[TrialRecord], None] | None):
        self.spec, self.study, self.out, self.url = spec, study, out, url
        self.target, self.on_trial = target, on_trial
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.finished = sum(counts_as_finished(t) for t in study.get_trials(deepcopy=False))
        self.running = 0
        self.deadline = None if spec.timeout_s is None else time.monotonic() + spec.timeout_s
        self.error: BaseException | None = None
        self.alive = spec.parallel
        self.all_done = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._work, args=(slot,), name=f"autotune-{slot}", daemon=True)
                   for slot in range(self.spec.parallel)]
        for t in threads:
            t.start()
        # wait on an Event, not Thread.join: a KeyboardInterrupt inside join can leave the thread looking finished
        # (CPython gh-90882), and the trials would be orphaned
        try:
            while not self.all_done.wait(0.2):
                pass
        except BaseException:
            self.stop.set()  # the workers terminate their trials and mark them interrupted
            self.all_done.wait()
            write_outputs(self.study, self.spec, self.out, self.url)
            raise
        if self.error is not None:
            raise self.error

    def _claim(self) -> bool:
        with self.lock:
            if self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
                return False
            if self.target is not None and self.finished + self.running >= self.target:
                return False
            self.running += 1
            return True

    def _work(self, slot: int) -> None:
        try:
            while self._claim():
                interrupted = True
                try:
                    interrupted = self._one(slot)
                finally:
                    with self.lock:
                        self.running -= 1
                        self.finished += not interrupted
        except BaseException as exc:  # handed to the main thread, which re-raises it
            with self.lock:
                self.error = self.error or exc
            self.stop.set()
        finally:
            with self.lock:
                self.alive -= 1
                if self.alive == 0:
                    self.all_done.set()

    def _one(self, slot: int) -> bool:
        spec = self.spec
        with self.lock:  # the sampler reads the whole history; one ask at a time keeps SQLite and TPE simple
            trial = self.study.ask()
            params = sample(trial, spec)
        trial_dir = self.out / "trials" / str(trial.number)
        if trial_dir.exists():  # left by a study that no longer exists in the storage: its metrics would mix in
            shutil.rmtree(trial_dir)
        cmd = trial_command(spec, params, trial_dir)
        env = {**os.environ}
        if spec.devices:
            env["CUDA_VISIBLE_DEVICES"] = spec.devices[slot % len(spec.devices)]
            trial.set_user_attr("device", env["CUDA_VISIBLE_DEVICES"])
        trial.set_user_attr("command", cmd)
        trial.set_user_attr("out_dir", str(trial_dir))
        outcome = run_trial(trial, spec, cmd, trial_dir, env=env, stop=self.stop)
        if outcome.returncode is not None:
            trial.set_user_attr("returncode", outcome.returncode)
        if outcome.error is not None:
            trial.set_user_attr("error", outcome.error)
        if outcome.state == "interrupted":
            trial.set_user_attr("interrupted", True)
        with self.lock:
            if outcome.state == "complete":
                frozen = self.study.tell(trial, list(outcome.values) if spec.multi else outcome.value)
            elif outcome.state == "pruned":
                frozen = self.study.tell(trial, state=TrialState.PRUNED)
            else:
                frozen = self.study.tell(trial, state=TrialState.FAIL)
            write_outputs(self.study, spec, self.out, self.url)
        if self.on_trial is not None:
            self.on_trial(record(frozen))
        return outcome.state == "interrupted"


def record(t: FrozenTrial) -> TrialRecord:
    duration = None if t.duration is None else t.duration.total_seconds()
    values = () if t.values is None else tuple(t.values)  # (FrozenTrial.value refuses several objectives)
    return TrialRecord(t.number, t.state.name, values[0] if values else None, dict(t.params), duration,
                       dict(t.user_attrs), values)


def goals(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A spec document's objectives (``objective`` or ``objectives``) with their defaults."""
    found = doc.get("objectives") or [doc["objective"]]
    return [{"direction": "minimize", **g} for g in found]


def result(study: optuna.Study, spec: StudySpec | Mapping[str, Any], out: Path, url: str) -> StudyResult:
    """The study's trials and best trial (or Pareto front), as read from the storage now."""
    doc = spec.model_dump(mode="json", by_alias=True) if isinstance(spec, StudySpec) else dict(spec)
    trials = [record(t) for t in study.get_trials(deepcopy=False)]
    done = [t for t in trials if t.state == "COMPLETE"]
    objs = goals(doc)
    metrics, directions = tuple(g["metric"] for g in objs), tuple(g["direction"] for g in objs)
    best, pareto = None, []
    if len(objs) > 1:
        front = {t.number for t in study.best_trials}
        pareto = [t for t in done if t.number in front]
    elif done:
        best = (max if directions[0] == "maximize" else min)(done, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
    return StudyResult(study.study_name, url, out, directions[0], metrics[0], trials, best, metrics, directions,
                       pareto)


def trials_csv(res: StudyResult, paths: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    value_cols = [f"value_{m}" for m in res.metrics] if res.multi else ["value"]
    w.writerow(["number", "state", *value_cols, "duration_s", *(f"params_{p}" for p in paths)])
    for t in res.trials:
        values = t.values if res.multi else (t.value,)
        w.writerow([t.number, t.state, *("" if v is None else repr(v) for v in (values or [None] * len(value_cols))),
                    "" if t.duration_s is None else repr(t.duration_s),
                    *("" if p not in t.params else _cell(t.params[p]) for p in paths)])
    return buf.getvalue()


def _cell(v: Any) -> str:
    return repr(v) if isinstance(v, float) else json.dumps(v) if v is None or isinstance(v, bool) else str(v)


def write_outputs(study: optuna.Study, spec: StudySpec | Mapping[str, Any], out: Path, url: str) -> StudyResult:
    """Rewrite ``trials.csv`` and ``best.json`` (each atomically) from the storage."""
    res = result(study, spec, out, url)
    paths = list(spec.space if isinstance(spec, StudySpec) else spec["space"])
    atomic_write_text(out / "trials.csv", trials_csv(res, paths))
    if res.multi:
        doc = {"study": res.name, "objectives": [{"metric": m, "direction": d} for m, d in zip(res.metrics,
                                                                                                res.directions)],
               "trials": [{"number": t.number, "values": list(t.values), "params": t.params, "command": t.command,
                           "command_line": shlex.join(t.command or []), "out_dir": t.user_attrs.get("out_dir")}
                          for t in res.pareto]}
        atomic_write_text(out / "pareto.json", json.dumps(doc, indent=2) + "\n")
    if res.best is not None:
        b = res.best
        doc = {"study": res.name, "metric": res.metric, "direction": res.direction, "number": b.number,
               "value": b.value, "params": b.params, "command": b.command,
               "command_line": shlex.join(b.command or []), "out_dir": b.user_attrs.get("out_dir")}
        atomic_write_text(out / "best.json", json.dumps(doc, indent=2) + "\n")
    return res
