"""The ``wandb`` backend: a Weights & Biases run, offline by default (``VizConfig.wandb_mode``), so nothing
touches the network unless the config says ``online``.

``wandb`` is imported only when this backend is built; without it the error says how to install it. The run lives
under ``<log_dir>/wandb/offline-run-*`` and ``wandb sync <that dir>`` uploads it later. Console capture is off
(wandb would otherwise wrap ``sys.stdout`` for the whole process). The run config arrives through
``log_hparams`` with dotted keys (``train.lr``), the same names every backend uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs.config import VizConfig
from specs.errors import ConfigError
from viz.backends.base import Histogram


class WandbBackend:
    def __init__(self, log_dir: Path, cfg: VizConfig, *, flush_every: int, flush_secs: float,
                 config: Mapping[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise ConfigError("viz.backend", "backend 'wandb' needs the wandb package, which is not installed: "
                                             "pip install 'lmstack-viz[wandb]' (or drop 'wandb' from viz.backend)"
                              ) from None
        self._wandb = wandb
        log_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=cfg.project, mode=cfg.wandb_mode, dir=str(log_dir),
                               reinit="create_new",
                               settings=wandb.Settings(console="off", silent=True))

    @property
    def run_dir(self) -> Path | None:
        """The run's own directory (``.../wandb/offline-run-*``), or None when wandb is disabled."""
        d = getattr(self._run, "dir", None)
        return Path(d).parent if d else None

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        self._run.log(dict(values), step=step)

    def log_text(self, step: int, tag: str, text: str, wall_time: float) -> None:
        self._run.log({tag: text}, step=step)

    def log_histogram(self, step: int, tag: str, hist: Histogram, wall_time: float) -> None:
        h = self._wandb.Histogram(np_histogram=(list(hist.counts), list(hist.edges)))
        self._run.log({tag: h}, step=step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], wall_time: float) -> None:
        self._run.config.update(dict(hparams), allow_val_change=True)
        if metrics:
            self._run.summary.update(dict(metrics))

    def flush(self) -> None:
        pass  # the wandb service process writes records as they arrive

    def close(self) -> None:
        self._run.finish()
