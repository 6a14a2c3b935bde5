"""``python -m export --model DIR --target onnx --quantize int8 --outdir artifacts``: export a checkpoint directory.

The model is built through the plugin resolver (``lmstack.models``, name from the checkpoint's config.json ``arch``
or ``--arch``) with ``.from_pretrained(DIR)``, so export never imports the model package. Flags set ExportConfig
fields; ``--config FILE`` reads an ExportConfig document (or a RunConfig's ``export:`` section) and any further
``--field VALUE`` pairs are dotted overrides of ExportConfig (``--hooks governance``, ``--with_cache false``).
Errors print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specs.cli import run_cli
from specs.config import ExportConfig
from specs.errors import ConfigError
from specs.io import config_from_dict, read_document
from specs.metadata import load_metadata
from specs.plugins import resolve
from specs.sources import local_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export an lmstack or Hugging Face checkpoint directory as a validated ONNX (decoder with KV "
                    "cache), torch.export, TorchScript or TensorRT artifact with a hashed model card.",
        epilog="Writes OUTDIR/model.onnx (or model.pt2 / model.pt / model.plan) and OUTDIR/modelcard.json with "
               "sha256 hashes, the configs, input/output names and the parity and quantization figures. The "
               "artifact is validated against the PyTorch model before anything is written to OUTDIR.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (lmstack or Hugging Face), or "
                   "a source such as registry:NAME@production (lmstack-registry)")
    p.add_argument("--arch", help="lmstack.models plugin name (default: config.json's arch, else 'transformer')")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON ExportConfig, or a RunConfig with an export: section")
    p.add_argument("--target", choices=["onnx", "torch_export", "torchscript", "tensorrt", "gguf"])
    p.add_argument("--opset", type=int, help="ONNX opset (18..23; default 19)")
    p.add_argument("--quantize", choices=["none", "int8", "fp8", "int4"])
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--outdir", help="where the artifacts go (default: artifacts)")
    p.add_argument("--no-cache", action="store_true", help="export a graph without past/present key-values")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison with the PyTorch model")
    p.add_argument("--no-hooks", action="store_true", help="run no post-export hooks (default: every installed one)")
    p.add_argument("--metadata", metavar="FILE",
                   help="training metadata.json for the hooks (default: DIR/metadata.json)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |logit diff| allowed in fp32 (default 1e-4)")
    p.add_argument("--name", help="name recorded in modelcard.json (default: the checkpoint directory's name)")
    return p


def _arch(model_dir: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        doc = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "transformer"
    return str(doc.get("arch", "transformer")) if isinstance(doc, dict) else "transformer"


# a RunConfig's sections besides export: (a document with any of them is a run config, not an ExportConfig)
_RUN_SECTIONS = {"name", "model", "data", "train", "dist", "viz", "eval", "serve"}


def build_config(args: argparse.Namespace, overrides: Sequence[str]) -> ExportConfig:
    doc: dict[str, Any] = {}
    if args.config:
        doc = read_document(args.config)
        if "export" in doc and isinstance(doc["export"], dict):
            doc = dict(doc["export"])
        elif _RUN_SECTIONS & set(doc):
            raise ConfigError("--config", f"{args.config} is a run config with no export: section; add one, or pass "
                                          "an ExportConfig document (target:, opset:, quantize:, ...)")
        doc.pop("schema_version", None)
    flags = {"target": args.target, "opset": args.opset, "quantize": args.quantize, "dtype": args.dtype,
             "outdir": args.outdir}
    doc.update({k: v for k, v in flags.items() if v is not None})
    if args.no_cache:
        doc["with_cache"] = False
    if args.no_validate:
        doc["validate"] = False
    if args.no_hooks:
        doc["hooks"] = []
    return config_from_dict(doc, ExportConfig, list(overrides))


def _main(argv: Sequence[str] | None) -> int:
    from export.exporter import export

    args, rest = _parser().parse_known_args(argv)
    cfg = build_config(args, rest)
    model_dir = local_path(args.model)  # a directory, or a source such as registry:NAME@production
    if not model_dir.is_dir():
        raise ConfigError("--model", f"{model_dir} is not a directory (expected a checkpoint with config.json)")
    meta_path = Path(args.metadata) if args.metadata else model_dir / "metadata.json"
    metadata = load_metadata(meta_path) if args.metadata or meta_path.is_file() else None
    model = resolve("lmstack.models", _arch(model_dir, args.arch)).from_pretrained(model_dir)
    out = export(model, cfg, source=model_dir, name=args.name, metadata=metadata, atol=args.atol)
    meta = out.card.metadata
    print(f"artifact: {out}")
    if "parity" in meta:
        print(f"parity vs PyTorch: max |logit diff| {meta['parity']['max_abs_diff']:.3g} (atol {args.atol:g})")
    if "quantization" in meta:
        q = meta["quantization"]
        print(f"{cfg.quantize}: mean |logit change| {q['logit_mean_abs_change']:.3g}, perplexity "
              f"{q['perplexity_reference']:.4g} -> {q['perplexity_artifact']:.4g}")
    print(f"model card: {out.outdir / 'modelcard.json'}")
    if out.hooks:
        print(f"hooks: {', '.join(out.hooks)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
