"""Training curves as a PNG: loss (train and eval), learning rate, throughput and gradient norm.

Reads the logs :mod:`viz.readers` finds under a run directory (one line per log directory, so a folder of runs
compares them) and draws them with matplotlib's Agg backend (no display needed). The metric names are those
the trainer logs: ``loss``, ``eval/loss``, ``lr``, ``tokens_per_s``, ``grad_norm`` (``step_time_s`` stands in
for throughput when ``tokens_per_s`` is absent). Noisy training loss is drawn faint with an exponential moving
average over it, as TensorBoard's smoothing slider does.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from specs.io import atomic_write_bytes
from viz.errors import VizError
from viz.readers import RunLog, load_scalars

# (title, y label, [(tag, label suffix)], log-scale y)
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], bool], ...] = (
    ("Loss", "loss (nats/token)", (("loss", "train"), ("eval/loss", "eval")), False),
    ("Learning rate", "lr", (("lr", ""),), False),
    ("Throughput", "tokens / s", (("tokens_per_s", ""),), False),
    ("Gradient norm", "global L2 norm", (("grad_norm", ""),), True),
)
FALLBACK = {"tokens_per_s": ("step_time_s", "step time (s)")}


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): weight 0 returns the values."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm if norm else v)
    return out


def image_format(out: str | os.PathLike[str]) -> str:
    """The matplotlib format that ``out``'s suffix names (``png`` when it has none); VizError, before anything is
    drawn, for a path that is a directory, lies under a file, or has a suffix matplotlib cannot write."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    p = Path(out)
    if p.is_dir():
        raise VizError(f"cannot write {p}: it is a directory; expected an image file path such as {p / 'curves.png'}")
    blocker = next((a for a in p.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise VizError(f"cannot write {p}: {blocker} is not a directory")
    formats = FigureCanvasAgg.get_supported_filetypes()
    fmt = p.suffix.lstrip(".").lower() or "png"
    if fmt not in formats:
        raise VizError(f"cannot write {p}: matplotlib cannot write {p.suffix!r} images; expected a suffix among "
                       f"{', '.join('.' + f for f in sorted(formats))}")
    tex = matplotlib.rcParams["pgf.texsystem"]
    if fmt == "pgf" and shutil.which(tex) is None:
        raise VizError(f"cannot write {p}: matplotlib runs {tex} to lay out a .pgf, and {tex} is not installed; "
                       "expected .png, .svg or .pdf")
    return fmt


def plot_runs(runs: Sequence[RunLog], out: str | os.PathLike[str], *, smooth: float = 0.6,
              title: str | None = None) -> Path:
    """Draw ``runs`` into ``out`` (PNG, SVG, PDF or another format matplotlib writes, by suffix), written
    atomically through a temp file in the same directory; return the path."""
    fmt = image_format(out)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not 0 <= smooth < 1:
        raise VizError(f"smooth must be in [0, 1), got {smooth}")
    known = {t for _, _, tags, _ in PANELS for t, _ in tags} | {t for t, _ in FALLBACK.values()}
    if not any(t in r.series for r in runs for t in known):
        tags = sorted({t for r in runs for t in r.series})
        raise VizError(f"the logs in {', '.join(str(r.path) for r in runs)} have none of "
                       f"{', '.join(sorted(known))}; tags found: {', '.join(tags[:20]) or '(none)'}")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, ylabel, tags, log_y) in zip(axes.flat, PANELS):
        drawn = False
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            for j, (tag, suffix) in enumerate(tags):
                if tag not in run.series and tag in FALLBACK and FALLBACK[tag][0] in run.series:
                    tag, ylabel = FALLBACK[tag]
                    panel_title = "Step time"
                if tag not in run.series:
                    continue
                steps, values = zip(*run.series[tag])
                label = " ".join(x for x in (run.name if len(runs) > 1 else "", suffix) if x) or tag
                style = "-" if j == 0 else "--"
                if tag == "loss" and smooth and len(values) > 2:
                    ax.plot(steps, values, style, color=color, alpha=0.25, linewidth=1)
                    ax.plot(steps, ema(values, smooth), style, color=color, label=f"{label} (EMA {smooth})")
                else:
                    ax.plot(steps, values, style, color=color, label=label,
                            marker="o" if len(values) < 30 else None, markersize=3)
                drawn = True
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if drawn:
            if log_y:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title or ", ".join(r.name for r in runs))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format=fmt)
    finally:
        plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue(), mode=0o644)


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs) -> Path:
    """Find the logs under ``run_dir`` and draw them into ``out`` (checked first: see :func:`image_format`)."""
    image_format(out)
    return plot_runs(load_scalars(run_dir), out, **kwargs)
