"""CLI helpers shared by every lmstack command, and ``python -m specs`` to check a config.

``python -m specs check cfgs/llm_small.yaml --dist.strategy FSDP`` validates, migrates and prints the
resolved config (schema_version stamped). ``python -m specs migrate old.yaml -o new.yaml`` rewrites it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from specs.config import CONFIG_CLASSES
from specs.errors import ConfigError, LmstackError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; print an LmstackError as ``error: ...`` with no traceback and return 2."""
    try:
        return int(main(argv) or 0)
    except LmstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    from specs.io import dump_config, dumps_config, load_config

    p = argparse.ArgumentParser(prog="python -m specs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("check", "migrate"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("--kind", default="RunConfig", choices=sorted(CONFIG_CLASSES))
        s.add_argument("--format", default="yaml", choices=["yaml", "json"])
        if name == "migrate":
            s.add_argument("-o", "--out", required=True)
    args, rest = p.parse_known_args(argv)
    try:
        cfg = load_config(args.config, CONFIG_CLASSES[args.kind], rest)
    except ConfigError as exc:
        if exc.path == "model" and args.kind == "RunConfig" and _has_init_from(args.config, rest):
            raise ConfigError("model", "missing here: a run with train.init_from takes the model section (and "
                              "data.tokenizer) from that directory when it starts; see the whole config with "
                              f"`python -m train.run --config {args.config} --print-config`") from None
        raise

    if args.cmd == "migrate":
        dump_config(cfg, args.out)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(dumps_config(cfg, args.format))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _has_init_from(path: str, overrides: Sequence[str]) -> bool:
    """Whether the document at ``path`` (or an override) sets ``train.init_from``."""
    from specs.io import read_document

    train = read_document(path).get("train") or {}
    return bool(train.get("init_from") if isinstance(train, dict) else None) or any(
        a.startswith("--train.init_from") for a in overrides)

