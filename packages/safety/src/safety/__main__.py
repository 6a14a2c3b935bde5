"""``python -m safety`` (or ``lmstack-safety``): check text against a policy, validate policies, run red-team suites.

    python -m safety check --policy builtin:default [--stage input|output] [--text T | < text] [--json]
    python -m safety policy validate POLICY          python -m safety policy list
    python -m safety redteam --suite builtin:injection|FILE.jsonl --url http://127.0.0.1:8000 [--model NAME]
                             [--api-key K] --out report.json [--md report.md] [--workers 4] [--timeout 60]
    python -m safety suites

``check`` prints the redacted text (or the verdict as JSON) and exits 0 when the text is allowed, 1 when a rule
blocks it. Errors are one line on stderr and exit status 2. The API key may come from LMSTACK_API_KEY instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from safety.guard import Guard
from safety.policy import builtin_policies, load_policy
from safety.redteam import run_suite
from safety.suite import builtin_suites, load_suite
from safety.target import HTTPTarget, TargetError
from specs.errors import LmstackError


def _check(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    verdict = Guard(args.policy).check(text, args.stage)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    elif verdict.allowed:
        sys.stdout.write(verdict.text)
        for f in verdict.findings:
            if f.action == "flag":
                print(f"flagged by {f.rule}: {f.label} at {f.start}:{f.end}", file=sys.stderr)
    else:
        print(f"blocked: {verdict.message}", file=sys.stderr)
    return 0 if verdict.allowed else 1


def _policy(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in builtin_policies():
            p = load_policy(f"builtin:{name}")
            print(f"builtin:{name:<10} {len(p.rules)} rules  {p.description}")
        return 0
    if not args.policy:
        raise LmstackError("policy validate needs a POLICY (a .yaml/.json file or builtin:NAME)")
    guard = Guard(args.policy)  # compiling also resolves classifier plugins
    p = guard.policy
    print(f"ok: policy {p.name!r} (schema_version {p.schema_version}), {len(p.rules)} rules: "
          + ", ".join(f"{r.id} ({r.detector.type} -> {r.action} on {'+'.join(r.stages)})" for r in p.rules))
    return 0


def _redteam(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    target = HTTPTarget(args.url, model=args.model, api_key=args.api_key or os.environ.get("LMSTACK_API_KEY"),
                        timeout=args.timeout, max_tokens=args.max_tokens)
    report = run_suite(suite, target, policy=args.policy, workers=args.workers, target_name=target.url,
                       refusal_anywhere=not args.refusal_at_start)
    if report.errors == len(report.results):
        raise TargetError(f"every case failed; the first: {report.results[0].error}")
    report.write_json(args.out)
    if args.md:
        report.write_markdown(args.md)
    for cat, r in report.categories.items():
        print(f"{cat:<16} {r.successes:>3}/{r.n:<3} {r.rate:6.1%}  [{r.low:.1%}, {r.high:.1%}]")
    o = report.overall
    print(f"{'overall':<16} {o.successes:>3}/{o.n:<3} {o.rate:6.1%}  [{o.low:.1%}, {o.high:.1%}]"
          + (f"  ({report.errors} target errors)" if report.errors else ""))
    print(f"wrote {args.out}" + (f" and {args.md}" if args.md else ""))
    return 0


def _suites(args: argparse.Namespace) -> int:
    for name in builtin_suites():
        s = load_suite(f"builtin:{name}")
        print(f"builtin:{name:<14} {len(s.cases):>3} cases  categories: {', '.join(s.categories)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m safety", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="check text against a policy (exit 0 allowed, 1 blocked)")
    p.add_argument("--policy", required=True, help="a .yaml/.json policy or builtin:NAME")
    p.add_argument("--stage", choices=["input", "output"], default="input")
    p.add_argument("--text", help="the text (default: read stdin)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("policy", help="validate or list policies")
    p.add_argument("action", choices=["validate", "list"])
    p.add_argument("policy", nargs="?")
    p = sub.add_parser("redteam", help="run a red-team suite against an OpenAI-compatible server")
    p.add_argument("--suite", required=True, help="builtin:NAME or a .jsonl file")
    p.add_argument("--url", required=True, help="the server (http://host:port) or its /v1/chat/completions")
    p.add_argument("--model", help="the model name (default: the server's first in /v1/models)")
    p.add_argument("--api-key", help="bearer key (or set LMSTACK_API_KEY)")
    p.add_argument("--out", required=True, help="the JSON report")
    p.add_argument("--md", help="also a Markdown report")
    p.add_argument("--policy", default="builtin:default", help="the policy of 'judge: policy' cases")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--refusal-at-start", action="store_true", help="count a refusal prefix only at the start")
    sub.add_parser("suites", help="list the built-in red-team suites")
    args = ap.parse_args(argv)
    try:
        return {"check": _check, "policy": _policy, "redteam": _redteam, "suites": _suites}[args.cmd](args)
    except (LmstackError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
