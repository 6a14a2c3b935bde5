"""``python -m corpus.cli build``: curate raw text into token shards (see corpus.pipeline).

    python -m corpus.cli build --input ./raw_corpus --outdir ./corpus/shards --tokenizer gpt2 \\
        --shard-size-tokens 1048576 --redact-pii --dedup

With no ``--input`` it builds from the embedded default (the Python standard library's source and docs). Errors
print without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from corpus.pipeline import BuildConfig, build
from corpus.quality import QualityConfig
from specs.cli import run_cli

_OVERRIDES = {"min_chars": int, "max_chars": int, "min_words": int, "max_words": int, "max_hash_ratio": float,
              "max_dup_line_frac": float, "max_dup_line_char_frac": float}  # QualityConfig field -> type


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m corpus.cli", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build shards, manifest and report from raw text",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--input", default=None,
                   help="directory (or file) of .txt, .md, .jsonl, .jsonl.gz; default: embedded Python stdlib")
    b.add_argument("--outdir", default="corpus/shards", help="output directory (created atomically)")
    b.add_argument("--tokenizer", default="byte",
                   help="'byte', 'bpe:<vocab>' (trained on the kept text), a tokenizer.json/.model path or "
                        "directory, or a model name in the local Hugging Face cache (never downloaded)")
    b.add_argument("--shard-size-tokens", type=int, default=1 << 20, help="roll to a new shard past this")
    b.add_argument("--redact-pii", action="store_true", help="replace e-mails, phones, IPs, card numbers")
    b.add_argument("--phone-region", default="US", help="default region for numbers without a country code")
    b.add_argument("--dedup", action="store_true", help="remove exact and near duplicates (MinHash LSH)")
    b.add_argument("--near-dup-threshold", type=float, default=0.8, help="Jaccard similarity of word 5-grams")
    b.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    b.add_argument("--quality", default="default", choices=["default", "gopher", "none"],
                   help="quality-filter preset (gopher: Rae et al. 2021 prose rules; default: code-friendly)")
    for name, kind in _OVERRIDES.items():
        b.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help="override the preset's limit")
    b.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="bad input (unreadable file, bad UTF-8, malformed JSONL): record and skip, or stop")
    b.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for curation")
    b.add_argument("--embedded-budget-bytes", type=int, default=BuildConfig(input=None, outdir="").
                   embedded_budget_bytes, help="size of the embedded default corpus")
    b.add_argument("--add-bos", action="store_true", help="prepend bos to each document")
    b.add_argument("--no-eos", action="store_true", help="do not append eos to each document")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    b.add_argument("--progress", choices=["auto", "on", "off"], default="auto", help="tqdm progress bars")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    quality = QualityConfig.preset(args.quality)
    overrides = {k: v for k in _OVERRIDES if (v := getattr(args, k)) is not None}
    cfg = BuildConfig(input=args.input, outdir=args.outdir, tokenizer=args.tokenizer,
                      shard_size_tokens=args.shard_size_tokens, redact_pii=args.redact_pii, dedup=args.dedup,
                      near_dup_threshold=args.near_dup_threshold, num_perm=args.num_perm,
                      quality=replace(quality, **overrides), on_error=args.on_error, workers=args.workers,
                      overwrite=args.overwrite, embedded_budget_bytes=args.embedded_budget_bytes,
                      phone_region=args.phone_region, add_bos=args.add_bos, add_eos=not args.no_eos,
                      progress={"auto": None, "on": True, "off": False}[args.progress])
    report = build(cfg)
    d, out = report["documents"], report["output"]
    print(f"wrote {cfg.outdir}: {out['shards']} shards, {out['tokens']} tokens; kept {d['kept']}/{d['read']} "
          f"documents, removed {d['removed']}, {report['errors']['count']} input errors "
          f"({report['timing']['input_mb_per_s']} MB/s); see report.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
