"""``python -m registry`` (also ``lmstack-registry``): the registry from the command line.

    python -m registry register NAME PATH [--metadata JSON|@FILE] [--tag T ...] [--parent REF]
    python -m registry list [NAME] [--all]            models, or one model's versions
    python -m registry show NAME [REF]                REF: a version, latest, a stage or an alias
    python -m registry checkout NAME REF DEST [--force]
    python -m registry promote NAME REF STAGE --reason TEXT [--keep-existing] [--require-signature [--pubkey P]]
                                               [--require eval.ppl<=20 ...]
    python -m registry alias NAME ALIAS [REF | --delete]
    python -m registry sign NAME REF (--key PRIV.pem | --signature SIG --pubkey PUB.pem | --pae-out FILE)
    python -m registry verify NAME [REF] [--pubkey PUB.pem]   re-hash blobs; with --pubkey check the signature
    python -m registry retention [NAME] [--keep-last N] [--max-age-days D] [--keep-stage S ...] [--policy FILE]
                                        [--dry-run | --apply]
    python -m registry gc | history [NAME] | keygen DIR | trust PUB.pem

``--root`` defaults to ``$LMSTACK_REGISTRY``, else ``./registry``; ``--actor`` to ``$LMSTACK_ACTOR``, else the
login name. ``--json`` prints machine-readable output. User errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from registry import promotion
from registry.errors import RegistryError
from registry.index import STAGES
from registry.lifecycle import Registry
from registry.retention import RetentionPolicy
from registry.signing import keygen
from specs.errors import ConfigError, LmstackError
from specs.io import read_document


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.startswith("@"):
        return read_document(text[1:])
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("--metadata", f"not JSON ({exc}); pass a JSON object or @file.json") from None
    if not isinstance(doc, dict):
        raise ConfigError("--metadata", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _policy(args: argparse.Namespace) -> RetentionPolicy:
    doc: dict[str, Any] = dict(read_document(args.policy)) if args.policy else {}
    for key, value in (("keep_last", args.keep_last), ("max_age_days", args.max_age_days),
                       ("keep_stages", args.keep_stage), ("keep_aliased", args.keep_aliased)):
        if value is not None:
            doc[key] = value
    return RetentionPolicy.from_dict(doc)


def _version_line(v: dict[str, Any]) -> str:
    extra = [f"stage {v['stage']}"] if v["stage"] != "none" else []
    extra += [f"aliases {', '.join(v['aliases'])}"] if v["aliases"] else []
    extra += ["signed"] if v["signed_by"] else []
    extra += [f"deleted {v['deleted_at']}"] if v["deleted_at"] else []
    return (f"  v{v['version']:<4} {v['created_at']}  {v['creator']:<10} {_size(v['size']):>10}  {v['digest'][:19]}"
            + (f"  ({'; '.join(extra)})" if extra else ""))


def run(args: argparse.Namespace, reg: Registry) -> tuple[Any, str]:
    """(the JSON document, the human-readable text) of one command."""
    cmd, actor = args.cmd, args.actor
    if cmd == "register":
        v = reg.register(args.name, args.path, metadata=_metadata(args.metadata), tags=args.tag, parent=args.parent,
                         actor=actor, exclude=args.exclude).to_dict()
        return v, (f"{args.name} v{v['version']} unchanged: the latest version has this content"
                   if v.get("reused") else f"registered {args.name} v{v['version']} ({len(v['files'])} files, "
                   f"{_size(v['size'])}) {v['digest']}")
    if cmd == "list" and args.name is None:
        models = [m.to_dict() for m in reg.list_models()]
        return models, "\n".join(f"{m['name']:<24} {m['versions']:>3} versions  latest v{m['latest']}"
                                 + (f"  production v{m['production']}" if m["production"] else "")
                                 + (f"  aliases {m['aliases']}" if m["aliases"] else "") for m in models) or "(empty)"
    if cmd == "list":
        vs = [v.to_dict() for v in reg.list_versions(args.name, include_deleted=args.all)]
        return vs, "\n".join([f"{args.name}:", *map(_version_line, vs)])
    if cmd == "show":
        v = reg.get(args.name, args.ref).to_dict()
        files = "\n".join(f"    {f['sha256'][:16]}  {_size(f['size']):>10}  {f['path']}" for f in v["files"])
        return v, "\n".join([_version_line(v).strip(), f"  parent: {v['parent']}", f"  tags: {v['tags']}",
                             f"  metadata: {json.dumps(v['metadata'], sort_keys=True)}",
                             f"  signed by: {', '.join(k[:16] for k in v['signed_by']) or '-'}", "  files:", files])
    if cmd == "checkout":
        path = reg.checkout(args.name, args.ref, args.dest, overwrite=args.force)
        return {"path": str(path)}, f"checked out {args.name} {args.ref} to {path} (every file's sha256 verified)"
    if cmd == "promote":
        bounds: dict[str, dict[str, float]] = {}
        for text in args.require:
            key, bound = promotion.parse_cli_bound(text)
            bounds.setdefault(key, {}).update(bound)
        v = reg.promote(args.name, args.ref, args.stage, reason=args.reason, actor=actor,
                        archive_existing=not args.keep_existing, require_signature=args.require_signature,
                        public_key=args.pubkey, require_metadata=bounds)
        return v.to_dict(), f"{args.name} v{v.version} is now in {v.stage}"
    if cmd == "alias" and args.delete:
        reg.delete_alias(args.name, args.alias, actor=actor)
        return {"deleted": args.alias}, f"deleted alias {args.alias!r} of {args.name}"
    if cmd == "alias":
        if args.ref is None:
            raise RegistryError("alias needs a REF to point at, or --delete")
        v = reg.set_alias(args.name, args.alias, args.ref, actor=actor)
        return v.to_dict(), f"{args.name}@{args.alias} -> v{v.version}"
    if cmd == "sign":
        if args.pae_out:
            Path(args.pae_out).write_bytes(reg.signing_payload(args.name, args.ref))
            return {"pae": args.pae_out}, f"wrote the bytes to sign to {args.pae_out}"
        if args.key:
            kid = reg.sign(args.name, args.ref, args.key, actor=actor)
        elif args.signature and args.pubkey:
            kid = reg.attach_signature(args.name, args.ref, Path(args.signature).read_bytes(), args.pubkey,
                                       actor=actor)
        else:
            raise RegistryError("sign needs --key PRIV.pem, or --signature SIG with --pubkey PUB.pem, or --pae-out")
        return {"keyid": kid}, f"signed {args.name} {args.ref} (keyid {kid})"
    if cmd == "verify":
        v = reg.verify(args.name, args.ref)
        doc: dict[str, Any] = {"name": args.name, "version": v.version, "digest": v.digest, "files": len(v.files)}
        text = f"{args.name} v{v.version}: manifest and {len(v.files)} files verified"
        if args.pubkey:
            doc["keyid"] = reg.verify_signature(args.name, v.version, args.pubkey)
            text += f"; signature by {doc['keyid'][:16]}... verified"
        return doc, text
    if cmd == "retention":
        policy = _policy(args)
        plan = (reg.apply_retention(policy, args.name, actor=actor) if args.apply
                else reg.plan_retention(policy, args.name))
        head = "deleted" if args.apply else "would delete (dry run; --apply deletes)"
        rows = lambda ds: [f"  {d.name} v{d.version}: {'; '.join(d.reasons)}" for d in ds] or ["  (nothing)"]
        lines = [f"{head}:", *rows(plan.delete), "kept:", *rows(plan.keep)]
        return {**plan.to_dict(), "applied": args.apply}, "\n".join(lines)
    if cmd == "gc":
        r = reg.gc(actor=actor)
        return r.to_dict(), (f"freed {_size(r.bytes_freed)} ({r.blobs_removed} blobs, {r.temp_files_removed} "
                             f"temp files, {r.checkouts_removed} checkouts)")
    if cmd == "history":
        events = [e.to_dict() for e in reg.history(args.name)]
        return events, "\n".join(f"{e['time']}  {e['actor']:<10} {e['action']:<17} {e['model'] or '-'}"
                                 f"{'' if e['version'] is None else ' v' + str(e['version'])}  "
                                 f"{json.dumps(e['details'], sort_keys=True)}" for e in events)
    if cmd == "trust":
        kid = reg.trust(args.pubkey, actor=actor)
        return {"keyid": kid}, f"trusted key {kid}"
    raise AssertionError(cmd)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m registry", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("LMSTACK_REGISTRY") or "registry",
                    help="registry directory (default: $LMSTACK_REGISTRY, else ./registry)")
    ap.add_argument("--actor", default=None, help="who is acting, for the event log (default: $LMSTACK_ACTOR/login)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("register", help="register a file or directory as the next version of NAME")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--metadata", help="a JSON object, or @FILE (JSON or YAML)")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--parent", help="the version this one derives from (lineage)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out the relative paths this shell pattern matches (repeatable), e.g. 'optimizer/*'")
    p = sub.add_parser("list", help="models, or the versions of NAME")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="include deleted versions")
    for cmd in ("show", "verify"):
        p = sub.add_parser(cmd, help="a version's manifest" if cmd == "show" else "re-hash a version's blobs")
        p.add_argument("name")
        p.add_argument("ref", nargs="?", default="latest")
        if cmd == "verify":
            p.add_argument("--pubkey", help="also verify the version's signature with this public key")
    p = sub.add_parser("checkout", help="rebuild a version's file or directory at DEST")
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("dest")
    p.add_argument("--force", action="store_true", help="replace an existing DEST")
    p = sub.add_parser("promote", help=f"move a version to a stage ({', '.join(STAGES)})")
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("stage")
    p.add_argument("--reason", required=True)
    p.add_argument("--keep-existing", action="store_true", help="do not archive the versions already in the stage")
    p.add_argument("--require-signature", action="store_true")
    p.add_argument("--pubkey", help="the key the signature gate checks (default: the registry's trusted keys)")
    p.add_argument("--require", action="append", default=[], metavar="KEY<=N|KEY>=N", help="a metadata bound")
    p = sub.add_parser("alias", help="point ALIAS at a version, or --delete it")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("ref", nargs="?")
    p.add_argument("--delete", action="store_true")
    p = sub.add_parser("sign", help="sign a version's manifest (DSSE, Ed25519)")
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("--key", help="Ed25519 private key (PKCS#8 PEM)")
    p.add_argument("--signature", help="a raw signature made elsewhere over the --pae-out bytes")
    p.add_argument("--pubkey", help="the public key of --signature")
    p.add_argument("--pae-out", help="write the bytes to sign (DSSE PAE of the manifest) to this file")
    p = sub.add_parser("retention", help="plan (default) or --apply a retention policy")
    p.add_argument("name", nargs="?")
    p.add_argument("--policy", help="a JSON or YAML policy file (the flags override it)")
    p.add_argument("--keep-last", type=int)
    p.add_argument("--max-age-days", type=float)
    p.add_argument("--keep-stage", action="append", choices=STAGES, help="repeat; default production and staging")
    p.add_argument("--keep-aliased", action=argparse.BooleanOptionalAction, default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", default=False)
    mode.add_argument("--apply", dest="apply", action="store_true")
    sub.add_parser("gc", help="remove blobs no live version references")
    p = sub.add_parser("history", help="the event log, of NAME or of everything")
    p.add_argument("name", nargs="?")
    p = sub.add_parser("keygen", help="write ed25519.pem and ed25519.pub.pem into DIR")
    p.add_argument("dir")
    p = sub.add_parser("trust", help="add a public key the signature gate accepts by default")
    p.add_argument("pubkey")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "keygen":
            priv, pub = keygen(args.dir)
            doc, text = {"private_key": str(priv), "public_key": str(pub)}, f"wrote {priv} (0600) and {pub}"
        else:
            with Registry(args.root, create=args.cmd in ("register", "trust")) as reg:
                doc, text = run(args, reg)
    except (LmstackError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
