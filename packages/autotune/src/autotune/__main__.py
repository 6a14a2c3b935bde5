"""``python -m autotune`` (also ``lmstack-autotune``): run, inspect and reproduce hyperparameter studies.

    python -m autotune validate SPEC                   # check the study document (and its base config)
    python -m autotune run SPEC --out DIR [--trials N] # run or continue it; a line per finished trial, then the best
    python -m autotune show DIR [--json]               # the trials, best first
    python -m autotune best DIR                        # the command that reproduces the best trial (each of the
                                                       # Pareto front's, for several objectives)

Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from autotune.report import as_json, best_command, load_result, table
from autotune.space import grid_size
from autotune.spec import check_config, load_spec
from autotune.study import TrialRecord, run_study
from specs.cli import run_cli


def _line(t: TrialRecord, metrics: Sequence[str]) -> str:
    got = t.values if len(metrics) > 1 else (t.value,)
    value = " ".join(f"{m}={'-' if v is None else f'{v:.6g}'}" for m, v in zip(metrics, got or (None,) * len(metrics)))
    params = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in t.params.items())
    took = "" if t.duration_s is None else f" ({t.duration_s:.1f}s)"
    line = f"trial {t.number} {t.state} {value} {params}{took}"
    if t.state == "FAIL" and t.error:
        line += f"\n  {t.error.splitlines()[-1] if t.error.splitlines() else t.error}"
    return line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autotune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a study document")
    v.add_argument("spec")
    r = sub.add_parser("run", help="run or continue a study")
    r.add_argument("spec")
    r.add_argument("--out", required=True, help="the study directory (storage, trials/, best.json, trials.csv)")
    r.add_argument("--trials", type=int, help="finished trials to reach (overrides the spec's trials)")
    s = sub.add_parser("show", help="the trials of a study directory, best first")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    b = sub.add_parser("best", help="the command that reproduces the best trial")
    b.add_argument("dir")
    b.add_argument("--json", action="store_true", help="print best.json")
    return p


def _main(argv: Sequence[str] | None) -> int:
    import optuna

    args = build_parser().parse_args(argv)
    if args.cmd == "validate":
        spec = load_spec(args.spec)
        check_config(spec)
        n = f"{grid_size(spec)} grid points" if spec.sampler.type == "grid" else f"{spec.trials or 'timeout'} trials"
        goal = ", ".join(f"{g.direction} {g.metric}" for g in spec.goals)
        print(f"ok: study {spec.name!r}, {len(spec.space)} parameters, {n}, {spec.sampler.type} sampler, "
              f"{spec.pruner.type} pruner; {goal}")
        return 0
    if args.cmd == "run":
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial from here instead
        spec = load_spec(args.spec, trials=args.trials)
        metrics = [g.metric for g in spec.goals]
        res = run_study(spec, args.out, on_trial=lambda t: print(_line(t, metrics), flush=True))
        if res.best is None and not res.pareto:
            print(f"no trial completed; see {res.out_dir}/trials/<n>/train.log")
            return 1
        if res.multi:
            print(f"Pareto front: {len(res.pareto)} trials (pareto.json)")
            for t in res.pareto:
                print(f"  {_line(t, metrics)}")
            return 0
        print(f"best: trial {res.best.number} {res.metric}={res.best.value:.6g} {res.best.params}")
        print(f"reproduce: {best_command(args.out)['command_line']}")
        return 0
    if args.cmd == "show":
        res = load_result(args.dir)
        print(json.dumps(as_json(res), indent=2) if args.json else table(res))
        return 0
    best = best_command(args.dir)
    lines = [t["command_line"] for t in best["trials"]] if "trials" in best else [best["command_line"]]
    print(json.dumps(best, indent=2) if args.json else "\n".join(lines))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # as Ctrl-C: the running trials are terminated and marked interrupted, not orphaned


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_cli(_main, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
