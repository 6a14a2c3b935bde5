"""Lineage graph of a training run as Graphviz DOT (and PNG when graphviz's ``dot`` is installed).

Reference: the DOT language (https://graphviz.org/doc/info/lang.html). Nodes come from the training metadata
(``specs.metadata``): data sources and shards with their sha256, the tokenizer, parent checkpoints, the checkpoint
(or the run when no checkpoint is recorded) and the exported artifacts. An edge A -> B reads "A was used to make B":
sources -> shards and tokenizer (a tokenizer is trained on sources, shards are tokenized with it), shards and
tokenizer -> checkpoint, parent checkpoints -> checkpoint, checkpoint -> artifacts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from governance._io import existing_files, sha256_file, write_atomic
from specs.errors import ConfigError, LmstackError
from specs.metadata import validate_metadata

MAX_SHARDS = 64  # past this the rest collapse into one summary node; every hash is still in RECEIPT.json
MAX_SOURCES = 32  # likewise for sources (a corpus of many files would otherwise draw one node per file)


def _q(text: str) -> str:
    """A DOT double-quoted string; label lines are joined with the DOT escape \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _short(sha: Any) -> str:
    return f"sha256:{sha[:12]}" if isinstance(sha, str) and sha else "sha256: (not recorded)"


class _Graph:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.edges: list[tuple[str, str]] = []
        self._n = 0

    def node(self, label: str, shape: str, indent: str = "  ", **attrs: str) -> str:
        nid = f"n{self._n}"
        self._n += 1
        extra = "".join(f", {k}={_q(v)}" for k, v in attrs.items())
        self.lines.append(f"{indent}{nid} [label={_q(label)}, shape={shape}{extra}];")
        return nid

    def edge(self, a: str, b: str) -> None:
        self.edges.append((a, b))


def build_dot(metadata: Mapping[str, Any], artifacts: Sequence[str | os.PathLike[str]] = ()) -> str:
    """DOT text for ``metadata`` (validated with specs.metadata); ``artifacts`` adds exported files by hash."""
    md = validate_metadata(metadata)
    g = _Graph()
    data = md.get("data") or {}
    sources, shards = list(data.get("sources") or []), list(data.get("shards") or [])
    src_ids, shard_ids = [], []
    if sources or shards or data.get("manifest"):
        g.lines.append('  subgraph cluster_data {\n    label="data"; style="rounded";')
        for s in sources[:MAX_SOURCES]:
            label = f"source: {s['name']}\nlicense: {s.get('license') or 'unknown'}\n{_short(s.get('sha256'))}"
            src_ids.append(g.node(label, "folder", "    "))
        if len(sources) > MAX_SOURCES:
            rest = sources[MAX_SOURCES:]
            licenses = ", ".join(sorted({str(s.get("license") or "unknown") for s in rest}))
            src_ids.append(g.node(f"+{len(rest)} more sources\nlicenses: {licenses}", "folder", "    ", style="dashed"))
        manifest = None
        if data.get("manifest"):
            manifest = g.node(f"manifest: {data['manifest']}\n{_short(data.get('manifest_sha256'))}", "note", "    ")
        for s in shards[:MAX_SHARDS]:
            tokens = f"\n{s['tokens']} tokens" if s.get("tokens") is not None else ""
            shard_ids.append(g.node(f"shard: {s['path']}\n{_short(s['sha256'])}{tokens}", "cylinder", "    "))
        if len(shards) > MAX_SHARDS:
            rest = shards[MAX_SHARDS:]
            tokens = sum(int(s.get("tokens") or 0) for s in rest)
            shard_ids.append(g.node(f"+{len(rest)} more shards\n{tokens} tokens", "cylinder", "    ", style="dashed"))
        g.lines.append("  }")
        for sid in shard_ids:
            for src in src_ids:
                g.edge(src, sid)
            if manifest:
                g.edge(manifest, sid)
    tok_id = None
    if md.get("tokenizer"):
        tok = md["tokenizer"]
        tok_id = g.node(f"tokenizer: {tok.get('spec', '?')}\n{_short(tok.get('sha256'))}", "component")
        for src in src_ids:
            g.edge(src, tok_id)
        for sid in shard_ids:
            g.edge(tok_id, sid)
    ckpt = md.get("checkpoint") or {}
    model = md.get("model") or {}
    step = f"\nstep {md['step']}" if md.get("step") is not None else ""
    arch = f"\n{model.get('arch')} ({model.get('params')} params)" if model.get("arch") else ""
    if ckpt:
        files = "".join(f"\n{f} {_short(h)}" for f, h in sorted((ckpt.get("files") or {}).items()))
        center = g.node(f"checkpoint: {ckpt.get('path', '?')}{step}{arch}{files}", "box3d", style="bold")
    else:
        center = g.node(f"run: {md['run']}{step}{arch}", "box3d", style="bold")
    for sid in shard_ids:
        g.edge(sid, center)
    if tok_id:
        g.edge(tok_id, center)
    for p in md.get("parents") or []:
        g.edge(g.node(f"{p['kind']}: {p['path']}\n{_short(p.get('sha256'))}", "box3d"), center)
    seen: set[str] = set()
    listed = [(str(a["path"]), a.get("sha256")) for a in md.get("artifacts") or []]
    listed += [(str(p), sha256_file(p)) for p in existing_files(artifacts)]
    for path, sha in listed:
        if path not in seen:
            seen.add(path)
            g.edge(center, g.node(f"artifact: {path}\n{_short(sha)}", "note"))
    head = [f"digraph {_q('lineage: ' + str(md['run']))} {{", '  rankdir="LR";',
            '  node [fontname="Helvetica", fontsize=10];', f"  label={_q('lineage of run ' + str(md['run']))};"]
    edges = [f"  {a} -> {b};" for a, b in g.edges]
    return "\n".join([*head, *g.lines, *edges, "}"]) + "\n"


def render_png(dot_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> str | None:
    """Render with graphviz's ``dot``; return None on success or a note saying why there is no PNG."""
    exe = shutil.which("dot")
    if exe is None:
        return "graphviz 'dot' is not installed, so no PNG was rendered (apt-get install graphviz; the .dot is written)"
    out = Path(png_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([exe, "-Tpng", "-o", tmp, str(dot_path)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise LmstackError(f"graphviz dot failed on {dot_path}: {r.stderr.strip()[:500]}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except subprocess.TimeoutExpired:
        raise LmstackError(f"graphviz dot took over 120 s on {dot_path}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return None


def write_lineage(out: str | os.PathLike[str], metadata: Mapping[str, Any],
                  artifacts: Sequence[str | os.PathLike[str]] = (),
                  png: bool = True) -> tuple[Path, Path | None, str | None]:
    """Write the DOT file ``out`` (and, with ``png``, ``out`` with the suffix .png beside it); return (dot path,
    png path or None, note or None). With ``png``, an ``out`` ending in .png is a ConfigError: the PNG would replace
    the DOT file."""
    if png and Path(out).suffix == ".png":
        raise ConfigError("lineage.out", f"{out} is where the PNG is rendered, so it would replace the DOT file; "
                                         "--out is the .dot path (e.g. LINEAGE.dot) and the PNG is written beside "
                                         "it with the suffix .png (or pass --no-png)")
    dot_path = write_atomic(out, build_dot(metadata, artifacts))
    if not png:
        return dot_path, None, None
    png_path = dot_path.with_suffix(".png")
    note = render_png(dot_path, png_path)
    return dot_path, (None if note else png_path), note
