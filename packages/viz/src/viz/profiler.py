"""torch.profiler traces every N training steps, saved as Chrome trace JSON (``*.pt.trace.json``).

The files open in Perfetto (ui.perfetto.dev), ``chrome://tracing`` and TensorBoard's profiler plugin
(torch-tb-profiler looks for the ``.pt.trace.json`` suffix). The cadence follows ``torch.profiler.schedule``:
one warm-up step (its events are dropped: the first profiled step pays the profiler's own start-up) and
``steps`` recorded steps. The profiler is driven by one call after each training step, so the trace covers
everything between two such calls: data loading, forward, backward, optimizer, and the logging itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule


class StepProfiler:
    """Profile steps ``k*every .. k*every + steps - 1`` (k >= 1), after one warm-up step before each window.

    Call ``after_step(step)`` once at the end of every training step. It returns the trace path when a window
    completes (``<out_dir>/step_<first recorded step>.pt.trace.json``), else None. ``every=0`` disables it.
    """

    def __init__(self, out_dir: str | os.PathLike[str], every: int, steps: int = 3, *, warmup: int = 1,
                 record_shapes: bool = True, profile_memory: bool = True, with_stack: bool = False):
        self.out_dir = Path(out_dir)
        self.every = every
        self.steps = steps
        self.warmup = warmup
        self._kw = {"record_shapes": record_shapes, "profile_memory": profile_memory, "with_stack": with_stack}
        self._prof: profile | None = None
        self._first_recorded = 0
        self._taken = 0
        self.traces: list[Path] = []

    @property
    def active(self) -> bool:
        return self._prof is not None

    def after_step(self, step: int) -> Path | None:
        if self._prof is not None:
            self._taken += 1
            n_traces = len(self.traces)
            self._prof.step()  # the schedule calls _save when the last recorded step ends
            if self._taken >= self.warmup + self.steps:
                self._prof.stop()
                self._prof = None
                return self.traces[-1] if len(self.traces) > n_traces else None
            return None
        # Start so that the warm-up steps end right before the next multiple of `every`.
        first = step + 1 + self.warmup
        if self.every and first % self.every == 0:
            self._start(first)
        return None

    def _start(self, first_recorded: int) -> None:
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._first_recorded = first_recorded
        self._taken = 0
        self._prof = profile(activities=activities, on_trace_ready=self._save,
                             schedule=schedule(wait=0, warmup=self.warmup, active=self.steps, repeat=1), **self._kw)
        self._prof.start()

    def _save(self, prof: profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{self._first_recorded:08d}.pt.trace.json"
        tmp = path.with_name(f".{path.name}.tmp")
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, path)  # a reader never sees half a trace
        self.traces.append(path)

    def close(self) -> None:
        """Stop a window in progress without saving it (its recorded steps are incomplete)."""
        if self._prof is not None:
            self._prof.on_trace_ready = None
            self._prof.stop()
            self._prof = None
