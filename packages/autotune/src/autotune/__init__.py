"""lmstack hyperparameter search: Optuna studies whose trials are lmstack training runs in subprocesses."""

from autotune.errors import AutotuneError
from autotune.report import best_command, load_result
from autotune.space import format_override, grid_points, override_args
from autotune.spec import StudySpec, check_config, load_spec, parse_spec
from autotune.study import StudyResult, TrialRecord, run_study

__version__ = "0.2.0"
__all__ = ["AutotuneError", "StudyResult", "StudySpec", "TrialRecord", "best_command", "check_config",
           "format_override", "grid_points", "load_result", "load_spec", "override_args", "parse_spec", "run_study"]
