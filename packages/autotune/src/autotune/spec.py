"""The study document: what to tune, how to score a trial, and how to search (a YAML file validated by pydantic v2).

It follows the shape users of Optuna, Ray Tune (``tune.loguniform``, ``tune.choice``) and W&B Sweeps
(``parameters: {lr: {distribution: log_uniform_values, min, max}}``) expect, keyed by lmstack's dotted config paths::

    schema_version: 1
    name: debug-lr
    config: cfgs/debug.yaml            # the base RunConfig; relative paths are from the working directory
    overrides: {train.steps: 20, train.eval_every: 10}
    objective: {metric: eval/loss, direction: minimize, reduce: last}
    # or several, traded off (Optuna's multi-objective studies: a Pareto front, no pruning):
    # objectives: [{metric: eval/loss}, {metric: perf/tokens_per_s, direction: maximize}]
    space:
      train.lr: {float: {low: 1.0e-4, high: 1.0e-2, log: true}}
      train.warmup_steps: {int: {low: 0, high: 10}}
      model.d_ff: {categorical: [128, 172, 256]}
    sampler: tpe                       # tpe | random | grid | nsga2, or {type: tpe, n_startup_trials: 5, ...}
    pruner: median                     # none | median | asha, or {type: median, n_warmup_steps: 5, ...}
    trials: 20                         # finished trials to reach; also timeout_s, seed, parallel, devices, storage
    enqueue: [{train.lr: 3.0e-3}]      # tried first (Optuna's enqueue_trial)
    command: [python, my_train.py]     # instead of `python -m train.run` (same --config/--path VALUE arguments)

Every error is a :class:`specs.errors.ConfigError` naming the field path (``space.train.lr.float.low``) and what was
expected.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from specs.errors import ConfigError, suggest

SCHEMA_VERSION = 1
Scalar = str | int | float | bool | None
SCALAR_TYPES = (str, int, float, bool, type(None))
# the runner owns these per trial: a shared value would make every trial write into the same directory
RESERVED = ("train.out_dir", "train.resume", "viz.log_dir")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Model):
    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log, self.step, is_int=False)
        return self


class IntRange(_Model):
    low: int
    high: int
    log: bool = False
    step: Annotated[int, Field(gt=0)] = 1

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log, self.step, is_int=True)
        return self


def _check_range(low: float, high: float, log: bool, step: float | None, *, is_int: bool) -> None:
    if not low < high:
        raise ValueError(f"needs low < high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (a log-uniform range), got low={low!r}")
    if log and step is not None and not (is_int and step == 1):
        raise ValueError(f"log: true and step={step!r} cannot be combined (Optuna samples one or the other)")


class Param(_Model):
    """One searched config field: exactly one of ``float``, ``int`` or ``categorical``."""

    float_: FloatRange | None = Field(None, alias="float")
    int_: IntRange | None = Field(None, alias="int")
    categorical: list[Any] | None = None

    @field_validator("categorical")
    @classmethod
    def _choices(cls, v: list[Any] | None) -> list[Any] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("needs at least one choice")
        for i, c in enumerate(v):
            if type(c) not in SCALAR_TYPES:
                raise ValueError(f"choice {i} is a {type(c).__name__} ({c!r}); expected str, int, float, bool or null")
        if len({(type(c), c) for c in v}) != len(v):
            raise ValueError(f"has repeated choices: {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            kinds = [k for k in ("float", "int", "categorical") if data.get(k) is not None]
            if len(kinds) != 1:
                raise ValueError(f"expected exactly one of float, int, categorical; got {sorted(data) or 'none'}")
        return data

    def contains(self, value: Any) -> bool:
        if self.categorical is not None:
            return any(type(value) is type(c) and value == c for c in self.categorical)
        r = self.float_ or self.int_
        assert r is not None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and r.low <= value <= r.high and (self.float_ is not None or float(value).is_integer())

    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        return "float" if self.float_ is not None else "int" if self.int_ is not None else "categorical"


class TPE(_Model):
    type: Literal["tpe"] = "tpe"
    n_startup_trials: Annotated[int, Field(ge=0)] = 10
    multivariate: bool = False
    constant_liar: bool = True  # parallel trials: pending ones count as bad guesses, so workers spread out


class Random(_Model):
    type: Literal["random"] = "random"


class Grid(_Model):
    type: Literal["grid"] = "grid"


class NSGA2(_Model):
    """Optuna's NSGAIISampler (Deb et al. 2002): an evolutionary search, the usual choice for several objectives."""

    type: Literal["nsga2"] = "nsga2"
    population_size: Annotated[int, Field(ge=2)] = 50
    crossover_prob: Annotated[float, Field(ge=0, le=1)] = 0.9
    swapping_prob: Annotated[float, Field(ge=0, le=1)] = 0.5


class NoPruner(_Model):
    type: Literal["none"] = "none"


class Median(_Model):
    type: Literal["median"] = "median"
    n_startup_trials: Annotated[int, Field(ge=0)] = 5
    n_warmup_steps: Annotated[int, Field(ge=0)] = 0
    interval_steps: Annotated[int, Field(ge=1)] = 1
    n_min_trials: Annotated[int, Field(ge=1)] = 1


class ASHA(_Model):
    type: Literal["asha"] = "asha"
    min_resource: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    reduction_factor: Annotated[int, Field(ge=2)] = 4
    min_early_stopping_rate: Annotated[int, Field(ge=0)] = 0


Sampler = Annotated[TPE | Random | Grid | NSGA2, Field(discriminator="type")]
Pruner = Annotated[NoPruner | Median | ASHA, Field(discriminator="type")]


class Objective(_Model):
    metric: str  # a tag of scalars.csv: eval/loss, loss, eval/ppl, ...
    direction: Literal["minimize", "maximize"] = "minimize"
    reduce: Literal["last", "min", "max"] = "last"  # over the values logged during the trial


class StudySpec(_Model):
    """A validated study document. Paths (``config``, ``storage``) are absolute once loaded by :func:`load_spec`."""

    schema_version: Literal[1]
    name: Annotated[str, Field(min_length=1)]
    config: str
    overrides: dict[str, Scalar | list[Scalar]] = {}
    objective: Objective | None = None
    objectives: Annotated[list[Objective], Field(min_length=2)] | None = None  # several: a multi-objective study
    space: dict[str, Param]
    sampler: Sampler = TPE()
    pruner: Pruner = NoPruner()
    trials: Annotated[int, Field(ge=1)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    seed: int = 0
    storage: str | None = None  # an SQLite file; None: <out>/study.db
    parallel: Annotated[int, Field(ge=1)] = 1
    devices: list[str] | None = None  # CUDA_VISIBLE_DEVICES per worker slot, round-robin
    command: Annotated[list[str], Field(min_length=1)] | None = None  # replaces `python -m train.run`
    poll_s: Annotated[float, Field(gt=0)] = 0.5  # how often a running trial's scalars.csv is read
    grace_s: Annotated[float, Field(ge=0)] = 30.0  # SIGTERM -> SIGKILL; train.run checkpoints in between
    # points to try first (Optuna's enqueue_trial, Ray Tune's points_to_evaluate): a known-good config, a baseline
    enqueue: list[dict[str, Scalar]] = []

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("space")
    @classmethod
    def _nonempty(cls, v: dict[str, Param]) -> dict[str, Param]:
        if not v:
            raise ValueError("needs at least one parameter to search")
        return v

    @property
    def goals(self) -> list[Objective]:
        """The objectives, one or several (``objective`` or ``objectives``)."""
        return list(self.objectives) if self.objectives is not None else [self.objective]  # type: ignore[list-item]

    @property
    def multi(self) -> bool:
        """Several objectives: Optuna keeps their Pareto front instead of one best trial."""
        return self.objectives is not None

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if (self.objective is None) == (self.objectives is None):
            raise ConfigError("objective", "set objective (one metric) or objectives (a list of two or more), "
                              + ("not both" if self.objective is not None else "one of the two is required"))
        metrics = [g.metric for g in self.goals]
        for i, m in enumerate(metrics):
            if m in metrics[:i]:
                raise ConfigError(f"objectives.{i}.metric", f"{m!r} is already objective {metrics.index(m)}; each "
                                  "metric once")
        if self.multi and self.pruner.type != "none":
            raise ConfigError("pruner", f"{self.pruner.type!r} prunes single-objective studies only (Optuna's pruners "
                              "compare one value); with objectives use pruner: none")
        for section in ("overrides", "space"):
            for path in getattr(self, section):
                _check_path(section, path)
        both = sorted(set(self.overrides) & set(self.space))
        if both:
            raise ConfigError(f"space.{both[0]}", "is also fixed in overrides; keep it in one of the two")
        for i, point in enumerate(self.enqueue):
            for path, value in point.items():
                if path not in self.space:
                    raise ConfigError(f"enqueue.{i}.{path}", f"is not a searched path; expected one of "
                                      f"{', '.join(self.space)}")
                if not self.space[path].contains(value):
                    raise ConfigError(f"enqueue.{i}.{path}", f"{value!r} is outside the space of {path}")
        if self.sampler.type == "grid":
            for path, p in self.space.items():
                if p.kind == "float" and p.float_.step is None:  # type: ignore[union-attr]
                    raise ConfigError(f"space.{path}.float.step", "the grid sampler needs a step for a float range "
                                      "(or use categorical choices)")
        elif self.trials is None and self.timeout_s is None:
            raise ConfigError("trials", "set trials (a count) or timeout_s; only the grid sampler defaults to the "
                              "size of its grid")
        return self


def _check_path(section: str, path: str) -> None:
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"{section}.{path}", "expected a dotted config path like train.lr or model.d_ff")
    if path in RESERVED:
        raise ConfigError(f"{section}.{path}", f"is set by the runner for each trial; remove it ({', '.join(RESERVED)}"
                          " are reserved)")


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """The user's path for a pydantic error location, and the type found there: pydantic also puts union members'
    names (``int``, ``function-after[...]``) and discriminator tags (``median``) in ``loc``; the user wrote neither."""
    tp: Any = StudySpec
    out: list[str] = []
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = next(((n, f) for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if info is None:
                out.append(str(part))
                return out, None
            out.append(info[1].alias or info[0])
            tp = info[1].annotation
        elif typing.get_origin(tp) in (dict, list):
            out.append(str(part))
            tp = typing.get_args(tp)[-1]
        else:  # a union member's name or a discriminator's tag
            models = [a for a in _flatten(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = next((m for m in models if m.model_fields.get("type") and m.model_fields["type"].default == part),
                      None)
    return out, _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    models = [a for a in _flatten(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1 and type(None) in typing.get_args(tp):
        return models[0]
    others = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(others) == 1 and type(None) in typing.get_args(tp):  # an optional list or dict (objectives)
        tp = others[0]
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _flatten(tp: Any) -> list[Any]:
    args = typing.get_args(tp)
    if not args or typing.get_origin(tp) in (dict, list):
        return [tp]
    return [x for a in args for x in _flatten(a)]


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][-1])
        _, parent = _walk(tuple(err["loc"][:-1]))
        valid = [f.alias or n for n, f in parent.model_fields.items()] if isinstance(parent, type) and issubclass(
            parent, BaseModel) else []
        return f"unknown field{suggest(name, valid)}; valid: {', '.join(valid)}" if valid else "unknown field"
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        got = f", got {ctx['tag']!r}" if "tag" in ctx else " (missing 'type')"
        return f"expected one of {ctx.get('expected_tags', '')}{got}"
    if err["type"] == "missing":
        return "missing; this field is required"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg += f", got {err['input']!r}"
    return msg


def parse_spec(doc: Any) -> StudySpec:
    """Validate a study document (a mapping, as parsed from YAML) into a :class:`StudySpec`."""
    if not isinstance(doc, Mapping):
        raise ConfigError("", f"a study document must be a mapping of fields, got a {type(doc).__name__}")
    if "schema_version" in doc and doc["schema_version"] != SCHEMA_VERSION:
        raise ConfigError("schema_version", f"expected {SCHEMA_VERSION}, got {doc['schema_version']!r}")
    try:
        return StudySpec.model_validate(dict(doc))
    except ValidationError as exc:
        # an unknown key explains a missing one next to it ('hi' for 'high'), so it is reported first
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        if isinstance(err.get("ctx", {}).get("error"), ConfigError):
            raise err["ctx"]["error"] from None
        raise ConfigError(".".join(_walk(tuple(err["loc"]))[0]), _message(err)) from None


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any], *, cwd: str | os.PathLike[str] | None = None,
              **changes: Any) -> StudySpec:
    """Read a study from a YAML/JSON file (or take a mapping), apply ``changes`` (``trials=8``), validate it, and
    make ``config`` (and ``storage``, ``command``'s script when it is a file) absolute against ``cwd``."""
    if isinstance(source, Mapping):
        doc: Any = dict(source)
    else:
        p = Path(source)
        if not p.is_file():
            raise ConfigError("", f"study file not found: {p}")
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{p} is not valid YAML: {exc}") from None
    if isinstance(doc, Mapping):
        doc = {**doc, **{k: v for k, v in changes.items() if v is not None}}
    spec = parse_spec(doc)
    base = Path(cwd or os.getcwd())
    config = (base / spec.config).resolve()
    if not config.is_file():
        raise ConfigError("config", f"base config file not found: {config}")
    fix: dict[str, Any] = {"config": str(config)}
    if spec.storage is not None:
        fix["storage"] = str((base / spec.storage).resolve())
    return spec.model_copy(update=fix)


def check_config(spec: StudySpec) -> None:
    """Check the study against lmstack's RunConfig schema before any trial runs: every searched and fixed path is a
    field, the base config with the fixed overrides loads, its metrics reach ``<out_dir>/logs/scalars.csv`` (the csv
    backend, no shared ``viz.log_dir``) and an ``eval/`` objective is evaluated (``train.eval_every > 0``).

    Skipped for a custom ``command`` (its config need not be a RunConfig). Combinations of searched values are not
    checked here (``model.n_heads`` must divide ``model.d_model``): such a trial fails, with train's message."""
    from autotune.space import format_override
    from specs.config import RunConfig
    from specs.io import config_from_dict, read_document
    from specs.schema import field_type

    if spec.command is not None:
        return
    for section in ("space", "overrides"):
        for path in getattr(spec, section):
            try:
                field_type(RunConfig, path)
            except ConfigError as exc:
                raise ConfigError(f"{section}.{path}", f"not a RunConfig field: {exc.message}") from None
    doc = read_document(spec.config)
    pairs = [(path, format_override(v)) for path, v in spec.overrides.items()]
    if (doc.get("train") or {}).get("init_from") or "train.init_from" in spec.overrides:
        return  # the model section comes from the init_from directory when the run starts (train.init_from)
    try:
        cfg = config_from_dict(doc, RunConfig, pairs)
    except ConfigError as exc:
        where = f"overrides.{exc.path}" if exc.path in spec.overrides else "config"
        raise ConfigError(where, f"{spec.config} with the fixed overrides does not load: {exc}") from None
    if "csv" not in cfg.viz.backend:
        raise ConfigError("overrides.viz.backend", f"must include 'csv' (the runner reads the trial's "
                          f"logs/scalars.csv); the config has {list(cfg.viz.backend)}")
    if cfg.viz.log_dir is not None:
        raise ConfigError("config", "sets viz.log_dir; every trial would log into the same directory. Remove it: "
                          "the runner reads <trial out_dir>/logs/scalars.csv")
    for i, goal in enumerate(spec.goals):
        if goal.metric.startswith("eval/") and cfg.train.eval_every == 0 and "train.eval_every" not in spec.space:
            where = f"objectives.{i}.metric" if spec.multi else "objective.metric"
            raise ConfigError(where, f"{goal.metric!r} is logged only when train.eval_every > 0; set it in "
                              "overrides (e.g. train.eval_every: 10)")
