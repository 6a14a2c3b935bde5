"""``python -m governance sbom|sign|keygen|receipt|lineage|card|verify``: the governance command line.

Each subcommand writes its files atomically after checking all of its inputs; bad input (a missing file, malformed
metadata, a key of the wrong length or format) prints ``error: ...`` naming the problem and exits 2 with nothing
written. ``verify`` prints every problem it finds and exits 1 when there is any, 0 when the release may ship.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from specs.cli import run_cli
from specs.errors import ConfigError

EPILOG = """examples:
  python -m governance sbom --out artifacts/SBOM.spdx.json --name my-model --artifacts artifacts/model.onnx
  python -m governance keygen --out keys/
  python -m governance sign --files artifacts/model.onnx artifacts/tokenizer.json \\
      --out artifacts/CHECKSUMS.sha256 --key keys/ed25519.key
  python -m governance receipt --artifacts artifacts/model.onnx --out artifacts/RECEIPT.json \\
      --metadata train/metadata.json
  python -m governance lineage --metadata train/metadata.json --out artifacts/LINEAGE.dot
  python -m governance card artifacts/model.onnx --metadata train/metadata.json \\
      --sbom artifacts/SBOM.spdx.json --out artifacts/MODEL_CARD.md
  python -m governance verify artifacts/model.onnx --pubkey keys/ed25519.pub.pem
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m governance", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("sbom", help="SPDX 2.3 JSON SBOM of this Python environment plus the given artifacts",
                       description="Write an SPDX 2.3 JSON SBOM: installed Python distributions (name, version, "
                                   "license, supplier, purl) and the artifacts as files with SHA1/SHA256. "
                                   "Set SOURCE_DATE_EPOCH for byte-identical output.")
    s.add_argument("--out", required=True, help="output path, e.g. artifacts/SBOM.spdx.json")
    s.add_argument("--name", required=True, help="model (document and root package) name")
    s.add_argument("--artifacts", nargs="*", default=[], metavar="FILE", help="files the release contains")
    s.add_argument("--version", dest="model_version", help="version of the model release (root package)")
    s.add_argument("--license", help="SPDX license expression of the model release (default NOASSERTION)")

    s = sub.add_parser("sign", help="GNU sha256sum checksums, Ed25519-signed with --key",
                       description="Write CHECKSUMS in sha256sum format (names relative to its directory); with "
                                   "--key also OUT.sig (detached Ed25519 signature) and OUT.pub.pem.")
    s.add_argument("--files", nargs="+", required=True, metavar="FILE")
    s.add_argument("--out", required=True, help="e.g. artifacts/CHECKSUMS.sha256")
    s.add_argument("--key", help="Ed25519 private key: 32 raw bytes, or PEM PKCS#8")

    s = sub.add_parser("keygen", help="generate an Ed25519 key pair",
                       description="Write ed25519.key (32 raw bytes, mode 0600; or ed25519.pem with --format pem) "
                                   "and ed25519.pub.pem into DIR (created if missing); a DIR that already holds "
                                   "a key is refused unless --force.")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--format", choices=["raw", "pem"], default="raw")
    s.add_argument("--force", action="store_true", help="replace an existing key pair (the old key is lost)")

    s = sub.add_parser("receipt", help="in-toto Statement receipt (DSSE-signed with --key)",
                       description="Write a reproducibility receipt: system, Python, CUDA/driver, torch, installed "
                                   "packages, git commit/dirty, command line, artifact hashes, training metadata.")
    s.add_argument("--artifacts", nargs="+", required=True, metavar="FILE")
    s.add_argument("--out", required=True, help="e.g. artifacts/RECEIPT.json")
    s.add_argument("--metadata", help="training metadata.json (specs.metadata format)")
    s.add_argument("--key", help="Ed25519 private key: sign the Statement into a DSSE envelope")
    s.add_argument("--no-torch-probe", action="store_true", help="do not import torch to record its CUDA build")

    s = sub.add_parser("lineage", help="Graphviz lineage graph (DOT, and PNG when graphviz is installed)")
    s.add_argument("--metadata", required=True, help="training metadata.json")
    s.add_argument("--out", required=True, help="e.g. artifacts/LINEAGE.dot (the PNG goes beside it)")
    s.add_argument("--artifacts", nargs="*", default=[], metavar="FILE", help="exported files to add as outputs")
    s.add_argument("--no-png", action="store_true", help="write only the DOT file")

    s = sub.add_parser("card", help="MODEL_CARD.md (Hugging Face front matter) and MODEL_CARD.json")
    s.add_argument("artifacts", nargs="+", metavar="ARTIFACT")
    s.add_argument("--out", required=True, help="e.g. artifacts/MODEL_CARD.md (sidecar: .json beside it)")
    s.add_argument("--metadata", help="training metadata.json")
    s.add_argument("--sbom", help="SBOM.spdx.json to summarise")
    s.add_argument("--name", help="model name (default: the metadata's run)")
    s.add_argument("--license", help="SPDX license expression of the model")

    s = sub.add_parser("verify", help="fail unless every governance artifact exists and checks out",
                       description="Check SBOM.spdx.json, CHECKSUMS.sha256 (+ .sig), MODEL_CARD.md/.json and "
                                   "RECEIPT.json against the artifacts. Prints every problem; exit 1 if any.")
    s.add_argument("artifacts", nargs="+", metavar="ARTIFACT")
    s.add_argument("--dir", help="where the governance files are (default: the first artifact's directory)")
    s.add_argument("--pubkey", help="pinned Ed25519 public key (PEM); signatures become required")
    s.add_argument("--no-spdx-tools", action="store_true", help="skip spdx-tools validation even if installed")
    return p


def _spare_inputs(args: argparse.Namespace) -> None:
    """A command whose output (or a file written beside it) is one of its own inputs would replace that input: a
    ConfigError before anything is read or written."""
    if args.cmd in ("keygen", "verify"):
        return
    inputs: dict[Path, str] = {}
    for name in ("artifacts", "files", "metadata", "sbom", "key"):
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value] if value is not None else []:
            inputs.setdefault(Path(v).resolve(), v)
    out = Path(args.out)
    beside = {"card": [out.with_suffix(".json")], "sign": [Path(f"{out}.sig"), Path(f"{out}.pub.pem")],
              "lineage": [] if getattr(args, "no_png", False) else [out.with_suffix(".png")]}.get(args.cmd, [])
    for o in (out, *beside):
        if (hit := inputs.get(o.resolve())) is not None:
            raise ConfigError(f"{args.cmd}.out", f"{o} is also an input ({hit}), which writing it would replace; "
                                                 "choose another --out")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _spare_inputs(args)
    if args.cmd == "sbom":
        from governance.sbom import write_sbom

        out = write_sbom(args.out, args.name, args.artifacts, version=args.model_version, license=args.license)
        print(f"wrote {out}")
    elif args.cmd == "sign":
        from governance.sign import write_checksums

        for path in write_checksums(args.files, args.out, args.key):
            print(f"wrote {path}")
    elif args.cmd == "keygen":
        from governance.sign import keygen

        for path in keygen(args.out, args.format, args.force):
            print(f"wrote {path}")
    elif args.cmd == "receipt":
        from governance.receipt import write_receipt

        out = write_receipt(args.out, args.artifacts, metadata=args.metadata, key_path=args.key,
                            probe_torch=not args.no_torch_probe)
        print(f"wrote {out}")
    elif args.cmd == "lineage":
        from governance.lineage import write_lineage
        from specs.metadata import load_metadata

        dot, png, note = write_lineage(args.out, load_metadata(args.metadata), args.artifacts, png=not args.no_png)
        print(f"wrote {dot}")
        if png:
            print(f"wrote {png}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    elif args.cmd == "card":
        from governance.card import write_card

        for path in write_card(args.out, args.artifacts, metadata=args.metadata, sbom=args.sbom, name=args.name,
                               license=args.license):
            print(f"wrote {path}")
    elif args.cmd == "verify":
        from governance.verify import verify

        report = verify(args.artifacts, args.dir, args.pubkey, use_spdx_tools=not args.no_spdx_tools)
        for line in report.passed:
            print(f"ok    {line}")
        for line in report.problems:
            print(f"FAIL  {line}", file=sys.stderr)
        if not report.ok:
            print(f"verify: {len(report.problems)} problem(s); do not release", file=sys.stderr)
            return 1
        print("verify: all checks passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)
