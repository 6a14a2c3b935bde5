"""The search space: Optuna distributions from a :class:`~autotune.spec.StudySpec`, the sampled values as
``--section.field VALUE`` overrides for ``train.run``, and the grid a grid search walks.

Override strings round-trip through :func:`specs.schema.parse_value` exactly: floats are written as ``repr`` with a
mantissa dot (PyYAML, which parses the values, reads ``1e-05`` as a string but ``1.0e-05`` as a float), bools as
``true``/``false`` and None as ``null``; as Optuna's own ``suggest_*`` calls, keyed by the dotted config path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import optuna

from autotune.spec import Param, StudySpec
from specs.errors import ConfigError


def format_override(value: Any) -> str:
    """A config value as the command-line text ``train.run`` parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError("", f"cannot pass the non-finite value {value!r} as an override")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(format_override(v) for v in value)
    raise ConfigError("", f"cannot pass a {type(value).__name__} ({value!r}) as an override")


def override_args(values: Mapping[str, Any]) -> list[str]:
    """``{"train.lr": 0.001}`` -> ``["--train.lr", "0.001"]`` (``--path=VALUE`` where the value starts with '-', so
    it is not read as an option)."""
    out: list[str] = []
    for path, value in values.items():
        text = format_override(value)
        out += [f"--{path}={text}"] if text.startswith("-") else [f"--{path}", text]
    return out


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    if param.float_ is not None:
        f = param.float_
        return optuna.distributions.FloatDistribution(f.low, f.high, log=f.log, step=f.step)
    if param.int_ is not None:
        i = param.int_
        return optuna.distributions.IntDistribution(i.low, i.high, log=i.log, step=i.step)
    return optuna.distributions.CategoricalDistribution(param.categorical or [])


def distributions(spec: StudySpec) -> dict[str, optuna.distributions.BaseDistribution]:
    return {path: distribution(p) for path, p in spec.space.items()}


def sample(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Ask ``trial`` for a value of every searched path (Optuna's define-by-run API, in space order)."""
    return {path: _suggest(trial, path, dist) for path, dist in distributions(spec).items()}


def _suggest(trial: optuna.Trial, path: str, dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return trial.suggest_float(path, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(path, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, optuna.distributions.CategoricalDistribution)
    return trial.suggest_categorical(path, dist.choices)


def grid_values(param: Param) -> list[Any]:
    """Every value a grid search tries for ``param``: the choices, or low, low + step, ... up to high."""
    if param.categorical is not None:
        return list(param.categorical)
    if param.int_ is not None:
        return list(range(param.int_.low, param.int_.high + 1, param.int_.step))
    f = param.float_
    assert f is not None and f.step is not None
    # decimal arithmetic, so 0.1 + 2 * 0.1 is 0.3 and not 0.30000000000000004
    low, step = Decimal(repr(f.low)), Decimal(repr(f.step))
    n = int((Decimal(repr(f.high)) - low) / step)
    return [float(low + i * step) for i in range(n + 1)]


def grid(spec: StudySpec) -> dict[str, list[Any]]:
    """The grid sampler's search space: path -> values."""
    return {path: grid_values(p) for path, p in spec.space.items()}


def grid_size(spec: StudySpec) -> int:
    return math.prod(len(v) for v in grid(spec).values())


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of the grid, as ``{path: value}`` (for checking what a grid study ran)."""
    g = grid(spec)
    return [dict(zip(g, combo)) for combo in itertools.product(*g.values())]
