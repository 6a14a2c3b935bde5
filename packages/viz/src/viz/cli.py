"""``python -m viz``: look at a run without opening TensorBoard.

``python -m viz plot RUN_DIR -o curves.png`` draws loss, learning rate, throughput and gradient-norm curves from
the CSV/JSONL logs found anywhere under RUN_DIR. ``python -m viz summary RUN_DIR`` prints each metric's last value.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from specs.cli import run_cli


def _main(argv: Sequence[str] | None) -> int:
    from viz.plot import plot_run
    from viz.readers import load_scalars

    p = argparse.ArgumentParser(prog="python -m viz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plot", help="draw training curves into an image",
                        description="Draw loss (train/eval), lr, tokens/s and grad-norm curves from the "
                                    "scalars.csv / metrics.jsonl logs found recursively under RUN_DIR; "
                                    "several log directories become several lines.")
    pp.add_argument("run_dir", metavar="RUN_DIR", help="a run's log directory, or a folder of runs")
    pp.add_argument("-o", "--out", default="curves.png", help="output image (.png, .svg, .pdf); default curves.png")
    pp.add_argument("--smooth", type=float, default=0.6, help="EMA weight for the training loss, 0 for none")
    pp.add_argument("--title", help="figure title (default: the run names)")
    ps = sub.add_parser("summary", help="print the last value of every metric",
                        description="Print, per log directory under RUN_DIR, each metric's last step and value.")
    ps.add_argument("run_dir", metavar="RUN_DIR")
    args = p.parse_args(argv)
    if args.cmd == "plot":
        out = plot_run(args.run_dir, args.out, smooth=args.smooth, title=args.title)
        print(f"wrote {out}")
    else:
        for run in load_scalars(args.run_dir):
            print(f"{run.name} ({run.path})")
            for tag, points in run.series.items():
                step, value = points[-1]
                print(f"  {tag:<32} step {step:>8}  {value:.6g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)
