"""The build report: ``report.json`` (machine-readable) and ``report.md`` (for people) beside the shards.

It says what was read, what was kept, what was removed and why, every input error with file and line, PII
counts per kind, licenses, the tokenizer and the output. Only the ``timing`` section varies between runs.
"""

from __future__ import annotations

import json
from typing import Any

from corpus.pii import MARKERS

_MAX_MD_ERRORS = 50


def write_reports(writer: Any, *, cfg: Any, inv: Any, stats: Any, tokenizer: Any, seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "input": inv.root,
        "outdir": str(cfg.outdir),
        "config": cfg.deterministic_dict(),
        "files": {"documents": len(inv.files), "unsupported": inv.unsupported,
                  "license_files": dict(sorted(inv.license_files.items()))},
        "documents": {"read": stats.documents_read, "kept": stats.documents_kept,
                      "removed": dict(sorted(stats.removed.items())),
                      "removed_total": sum(stats.removed.values())},
        "bytes": {"read": stats.bytes_read, "kept": stats.bytes_kept},
        "sources": dict(sorted(stats.by_source.items())),
        "errors": {"count": len(stats.issues), "policy": cfg.on_error,
                   "items": [{"file": i.file, "line": i.line, "error": i.error} for i in stats.issues]},
        "pii": {"redacted": cfg.redact_pii, "counts": dict(sorted(stats.pii.items())),
                "markers": MARKERS},
        "licenses": dict(sorted(stats.licenses.items())),
        "unrecognised_licenses": dict(sorted(inv.unrecognised_licenses.items())),
        "near_duplicates": stats.near_duplicates,
        "tokenizer": {"spec": cfg.tokenizer, "fingerprint": tokenizer.fingerprint(),
                      "vocab_size": tokenizer.vocab_size},
        "output": {"tokens": writer.num_tokens, "documents": writer.num_documents, "shards": writer.num_shards},
        "timing": {"seconds": round(seconds, 3),
                   "input_mb_per_s": round(stats.bytes_read / 1e6 / max(seconds, 1e-9), 3)},
    }
    report = json.loads(json.dumps(report, default=list))
    writer.write_file("report.json", json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    writer.write_file("report.md", render_markdown(report))
    return report


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(r: dict[str, Any]) -> str:
    d, out = r["documents"], r["output"]
    parts = [
        "# Corpus build report", "",
        f"- input: `{r['input']}`", f"- output: `{r['outdir']}`: {out['shards']} shards, {out['tokens']:,} tokens, "
        f"{out['documents']:,} documents",
        f"- tokenizer: `{r['tokenizer']['spec']}` (vocab {r['tokenizer']['vocab_size']}, "
        f"sha256 `{r['tokenizer']['fingerprint'][:16]}…`)",
        f"- documents: read {d['read']:,}, kept {d['kept']:,}, removed {d['removed_total']:,}",
        f"- bytes: read {r['bytes']['read']:,}, kept {r['bytes']['kept']:,}",
        f"- time: {r['timing']['seconds']} s ({r['timing']['input_mb_per_s']} MB/s of input)", "",
        "## Removed documents", "",
        _table(sorted(d["removed"].items()), ("reason", "documents")) if d["removed"] else "None.", "",
        "## PII", "",
    ]
    if r["pii"]["redacted"]:
        counts = r["pii"]["counts"]
        parts.append(_table([(k, r["pii"]["markers"][k], counts.get(k, 0)) for k in sorted(r["pii"]["markers"])],
                            ("kind", "marker", "redacted")))
    else:
        parts.append("Not redacted (run with `--redact-pii`).")
    parts += ["", "## Licenses (kept documents)", "",
              _table([(k, v["documents"], v["bytes"]) for k, v in r["licenses"].items()],
                     ("SPDX", "documents", "bytes")), ""]
    if r["unrecognised_licenses"]:
        parts += ["Unrecognised license values (tagged NOASSERTION): "
                  + ", ".join(f"`{k}` ({v})" for k, v in r["unrecognised_licenses"].items()), ""]
    errs = r["errors"]
    parts += ["## Input errors", "", f"{errs['count']} (policy: `--on-error {errs['policy']}`)", ""]
    if errs["items"]:
        rows = [(e["file"], e["line"] if e["line"] is not None else "", e["error"])
                for e in errs["items"][:_MAX_MD_ERRORS]]
        parts += [_table(rows, ("file", "line", "error")), ""]
        if errs["count"] > _MAX_MD_ERRORS:
            parts += [f"… and {errs['count'] - _MAX_MD_ERRORS} more in report.json.", ""]
    if r["files"]["unsupported"]:
        parts += ["## Files not read (unsupported type)", "",
                  "\n".join(f"- `{f}`" for f in r["files"]["unsupported"][:_MAX_MD_ERRORS]), ""]
    return "\n".join(parts) + "\n"
