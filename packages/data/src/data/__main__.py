"""``python -m data``: inspect and verify shard directories, and tokenize text with a tokenizer spec.

    python -m data info corpus/shards          # manifest summary as JSON
    python -m data verify corpus/shards        # lengths and sha256 of every shard (exit 2 naming a bad file)
    python -m data encode --tokenizer byte "hello"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from specs.cli import run_cli


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("info", "print the manifest summary"), ("verify", "check every shard's length and sha256")):
        s = sub.add_parser(name, help=text)
        s.add_argument("path", help="shard directory (holds manifest.json)")
    e = sub.add_parser("encode", help="print the ids of TEXT")
    e.add_argument("text")
    e.add_argument("--tokenizer", default="byte", help="'byte', a tokenizer.json/.model path or directory")
    args = p.parse_args(argv)
    if args.cmd == "encode":
        from data.tokenizer import load_tokenizer

        print(json.dumps(load_tokenizer(args.tokenizer).encode(args.text)))
        return 0
    from data.shards import ShardSet

    shards = ShardSet.open(args.path)
    if args.cmd == "verify":
        shards.verify()
        print(f"ok: {len(shards)} shards, {shards.num_tokens} tokens, {shards.num_documents} documents verified")
        return 0
    m = shards.manifest
    summary = {k: m.get(k) for k in ("format", "format_version", "dtype", "vocab_size", "num_tokens", "num_documents",
                                     "num_shards", "tokenizer", "created_by")}
    summary["sources"] = len(m.get("sources", []))
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
