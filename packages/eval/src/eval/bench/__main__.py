"""CLI of :mod:`eval.bench`: ``python -m eval.bench {server,generate,train-step} ... [--out FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from eval.bench import SUBCOMMANDS, Subcommand
from eval.bench.common import write_json
from eval.bench.options import out_file
from specs.cli import run_cli


def build_parser(commands: Mapping[str, Subcommand] = SUBCOMMANDS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.bench",
                                description="lmstack benchmarks; each prints one JSON document to stdout.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands) + "}")
    for name, cmd in commands.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        cmd.add_args(sp)
        sp.add_argument("--out", default=None, type=out_file,
                        help="also write the JSON to this file (atomically; checked before the run)")
    return p


def _main(argv: Sequence[str] | None, commands: Mapping[str, Subcommand] = SUBCOMMANDS) -> int:
    args = build_parser(commands).parse_args(argv)
    doc = commands[args.command].run(args)
    text = json.dumps(doc, indent=2, sort_keys=True)
    print(text)
    if args.out:
        write_json(args.out, doc)
    errors = doc.get("results", {}).get("errors") if isinstance(doc.get("results"), dict) else None
    if errors:  # the variants that ran are in the JSON; say which failed and exit non-zero
        for name, err in errors.items():
            print(f"error: {args.command} variant {name!r} failed: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, commands: Mapping[str, Subcommand] = SUBCOMMANDS) -> int:
    return run_cli(lambda a: _main(a, commands), argv)


if __name__ == "__main__":
    sys.exit(main())
