"""Model card: Markdown with Hugging Face-style YAML front matter, plus a JSON sidecar.

References: Mitchell et al. 2019, "Model Cards for Model Reporting" (sections), and the Hugging Face model card
metadata spec (https://huggingface.co/docs/hub/model-cards: ``license``, ``tags``, ``datasets``, ``metrics``,
``pipeline_tag``, ``library_name``, ``model-index``). Sections Model Details, Intended Use, Training Data,
Evaluation, Limitations and Reproducibility are filled from the training metadata (``specs.metadata``) and the
SBOM. The sidecar ``MODEL_CARD.json`` is a ``specs.modelcard.ModelCard`` (file hashes and sizes, lineage), so
``ModelCard.load(...).verify(dir)`` checks the artifacts it describes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from governance._io import existing_files, rel_name, write_atomic
from governance.licenses import normalize
from specs.errors import ConfigError
from specs.metadata import load_metadata, validate_metadata
from specs.modelcard import LineageEntry, ModelCard

# Licence ids the Hugging Face Hub accepts as-is (lowercased SPDX); anything else is 'other' + license_name.
HF_LICENSES = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-4.0",
               "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "gpl-2.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0",
               "mpl-2.0", "bsl-1.0", "unlicense", "artistic-2.0", "isc", "wtfpl", "openrail", "afl-3.0", "ecl-2.0",
               "epl-2.0", "eupl-1.1", "osl-3.0", "zlib", "postgresql", "ms-pl", "lppl-1.3c", "ncsa", "odbl", "pddl"}


def _hf_license(spdx: str | None) -> dict[str, str]:
    if spdx is None:
        return {"license": "other", "license_name": "unspecified"}
    hf = spdx.lower().removesuffix("-only")
    return {"license": hf} if hf in HF_LICENSES else {"license": "other", "license_name": spdx}


def _sbom_summary(path: Path) -> dict[str, Any]:
    """What the card says about the SBOM; anything but an SPDX 2.x JSON document is a ConfigError naming the file."""
    expected = ('expected an SPDX 2.x JSON SBOM: an object with "spdxVersion": "SPDX-2.3", as '
                '`python -m governance sbom` writes')
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"invalid JSON: {exc}"
        raise ConfigError("card.sbom", f"{path} is not a readable SPDX JSON document ({why}); {expected}") from None
    except OSError as exc:
        raise ConfigError("card.sbom", f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        got = "a JSON " + {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
            type(doc), "null")
    elif not str(doc.get("spdxVersion", "")).startswith("SPDX-2."):
        got = f"spdxVersion {doc['spdxVersion']!r}" if "spdxVersion" in doc else "an object without 'spdxVersion'"
    elif not isinstance(doc.get("packages") or [], list):
        got = "'packages' that is not a list"
    else:
        got = None
    if got:
        raise ConfigError("card.sbom", f"{path} is not an SPDX JSON SBOM (got {got}); {expected}")
    pkgs = [p for p in doc.get("packages") or [] if isinstance(p, dict) and p.get("primaryPackagePurpose") == "LIBRARY"]
    return {"file": path.name, "namespace": doc.get("documentNamespace"), "spdxVersion": doc.get("spdxVersion"),
            "packages": len(pkgs),
            "packages_without_license": sorted(str(p.get("name")) for p in pkgs
                                               if p.get("licenseDeclared") == "NOASSERTION")}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def build_card(artifacts: Sequence[str | os.PathLike[str]], *, base_dir: str | os.PathLike[str],
               metadata: Mapping[str, Any] | None = None, sbom: str | os.PathLike[str] | None = None,
               name: str | None = None, license: str | None = None) -> tuple[str, ModelCard]:
    """``(markdown, sidecar ModelCard)`` for the artifacts, with names relative to ``base_dir``."""
    paths = existing_files(artifacts)
    md = validate_metadata(metadata) if metadata is not None else {}
    spdx = None
    if license:
        spdx = normalize(license)
        if spdx is None:
            raise ConfigError("card.license", f"{license!r} is not a valid SPDX license expression (e.g. 'Apache-2.0')")
    sb = _sbom_summary(existing_files([sbom], "sbom")[0]) if sbom else None
    base = Path(base_dir)
    title = name or md.get("run") or paths[0].stem
    mc = ModelCard.for_files(title, base, [rel_name(p, base) for p in paths])
    model, data, tok = md.get("model") or {}, md.get("data") or {}, md.get("tokenizer") or {}
    sources, shards = data.get("sources") or [], data.get("shards") or []
    metrics = {k: v for k, v in (md.get("metrics") or {}).items() if isinstance(v, (int, float))}

    fm: dict[str, Any] = _hf_license(spdx)
    tags = ["lmstack", "text-generation", *([model["arch"]] if model.get("arch") else []),
            *sorted({p.suffix.lstrip(".") for p in paths if p.suffix})]
    fm["tags"] = list(dict.fromkeys(tags))
    if any(p.suffix == ".onnx" for p in paths):
        fm["library_name"] = "onnx"
    fm["pipeline_tag"] = "text-generation"
    if sources:
        fm["datasets"] = [s["name"] for s in sources]
    if metrics:
        fm["metrics"] = sorted(metrics)
        fm["model-index"] = [{"name": title, "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"name": sources[0]["name"] if sources else f"{title} evaluation data",
                        "type": sources[0]["name"] if sources else "custom"},
            "metrics": [{"type": k, "value": v, "name": k} for k, v in sorted(metrics.items())]}]}]

    git, env = md.get("git") or {}, md.get("environment") or {}
    details = [f"- **Name:** {title}", f"- **Run:** {md.get('run', 'not recorded')}"]
    if model:
        details.append(f"- **Architecture:** {model.get('arch', '?')}, {model.get('params', '?')} parameters")
    if md.get("step") is not None:
        details.append(f"- **Training step:** {md['step']}")
    if md.get("created"):
        details.append(f"- **Created:** {md['created']}")
    details.append(f"- **License:** {spdx or 'not specified'}")
    if git:
        dirty = " (dirty tree)" if git.get("dirty") else ""
        details.append(f"- **Source:** git commit `{git.get('commit', '?')}`{dirty}")
    model_cfg = (md.get("config") or {}).get("model") or {}
    cfg_table = _table(["field", "value"], sorted(model_cfg.items())) if model_cfg else ""
    art_table = _table(["file", "bytes", "sha256"], [(f, h.bytes, f"`{h.sha256}`") for f, h in mc.files.items()])
    sbom_line = (f"Software bill of materials: [{sb['file']}]({sb['file']}) ({sb['spdxVersion']}, {sb['packages']} "
                 f"Python packages, namespace `{sb['namespace']}`)." if sb else "No SBOM was given.")

    if sources:
        data_md = _table(["source", "license", "sha256"],
                         [(s["name"], s.get("license") or "unknown", f"`{s.get('sha256') or '-'}`") for s in sources])
    else:
        data_md = "The training metadata records no data sources."
    tokens = sum(int(s.get("tokens") or 0) for s in shards)
    if shards:
        data_md += f"\n\n{len(shards)} token shards, {tokens} tokens in total"
        data_md += f" (manifest `{data['manifest']}`)." if data.get("manifest") else "."
    if tok:
        data_md += f"\n\nTokenizer: `{tok.get('spec', '?')}` (sha256 `{tok.get('sha256') or '-'}`)."
    eval_md = (_table(["metric", "value"], sorted(metrics.items())) if metrics
               else "No evaluation metrics were recorded in the training metadata.")

    limits = ["- A language model trained on a limited corpus: it can produce fluent but false, biased or offensive "
              "text, and it has no safety tuning unless stated above.",
              "- Metrics are from the training run's own evaluation split and do not measure fitness for any "
              "particular downstream use."]
    if unknown := [s["name"] for s in sources if not s.get("license")]:
        limits.append(f"- Training data sources without a recorded license: {', '.join(unknown)}.")
    if git.get("dirty"):
        limits.append("- Trained from a git tree with uncommitted changes: the commit alone does not reproduce it.")
    if not metrics:
        limits.append("- Not evaluated: no metrics were recorded.")
    if sb and sb["packages_without_license"]:
        limits.append(f"- {len(sb['packages_without_license'])} of {sb['packages']} Python packages in the SBOM "
                      "have no machine-readable license (NOASSERTION).")
    if spdx is None:
        limits.append("- No license was specified for the model weights (pass --license).")
    repro = [f"- Command: `{' '.join(map(str, md['command']))}`" if md.get("command") else "- Command: not recorded"]
    if env:
        repro.append("- Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(env.items()) if v is not None))
    repro.append("- Receipt: `RECEIPT.json` (in-toto Statement); lineage: `LINEAGE.dot`; "
                 "checksums: `CHECKSUMS.sha256`.")

    body = [f"# {title}", "", "## Model Details", "", *details, "", art_table, "", sbom_line, ""]
    if cfg_table:
        body += ["Model configuration:", "", cfg_table, ""]
    body += ["## Intended Use", "",
             "Research and development of language models: text generation, benchmarking and as a base for "
             "fine-tuning. Out of scope: decisions about people, medical, legal or financial advice, and any use "
             "that needs factual reliability, without further evaluation and safeguards.", "",
             "## Training Data", "", data_md, "", "## Evaluation", "", eval_md, "",
             "## Limitations", "", *limits, "", "## Reproducibility", "", *repro, ""]
    text = "---\n" + yaml.safe_dump(fm, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)

    lineage = [LineageEntry(kind="dataset", name=s["name"], sha256=s.get("sha256")) for s in sources]
    lineage += [LineageEntry(kind="shard", name=str(s["path"]), sha256=s.get("sha256")) for s in shards]
    if tok:
        lineage.append(LineageEntry(kind="tokenizer", name=str(tok.get("spec", "tokenizer")), sha256=tok.get("sha256")))
    lineage += [LineageEntry(kind="checkpoint", name=str(p["path"]), sha256=p.get("sha256"))
                for p in md.get("parents") or []]
    sidecar = ModelCard(name=title, files=mc.files, config=model_cfg, lineage=tuple(lineage),
                        metadata={"front_matter": fm, "license": spdx, "metrics": metrics, "sbom": sb,
                                  "run": md.get("run"), "step": md.get("step"), "git": git or None})
    return text, sidecar


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside the markdown card: ``out`` with its suffix replaced by ``.json``."""
    return Path(out).with_suffix(".json")


def write_card(out: str | os.PathLike[str], artifacts: Sequence[str | os.PathLike[str]], *,
               metadata: Mapping[str, Any] | str | os.PathLike[str] | None = None, **kwargs: Any) -> list[Path]:
    """Write MODEL_CARD.md and its MODEL_CARD.json sidecar atomically; return both paths.

    ``out`` is the markdown path; one ending in ``.json`` is a ConfigError, since the sidecar would replace it."""
    if Path(out).suffix == ".json":  # sidecar_path(out) == out
        raise ConfigError("card.out", f"{out} is where the JSON sidecar goes, so it would replace the markdown card; "
                                      "--out is the markdown path (e.g. MODEL_CARD.md) and the sidecar is written "
                                      "beside it with the suffix .json")
    md = load_metadata(metadata) if isinstance(metadata, (str, os.PathLike)) else metadata
    text, sidecar = build_card(artifacts, base_dir=Path(out).parent, metadata=md, **kwargs)
    return [write_atomic(out, text), write_atomic(sidecar_path(out), sidecar.to_json())]
