"""Lineage DOT: parsed by pydot, rendered by graphviz when installed, edges follow the data flow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydot
import pytest

from governance import lineage
from governance.lineage import build_dot, write_lineage

# pydot 4 builds its parser with pyparsing names that pyparsing 3.3 deprecates; not our code's warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use")


def _graph(text: str):
    graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1
    return graphs[0]


def _labels(g) -> dict[str, str]:
    nodes = list(g.get_nodes()) + [n for sg in g.get_subgraphs() for n in sg.get_nodes()]
    return {n.get_name(): n.get("label").strip('"') for n in nodes if n.get("label")}


def test_dot_has_the_lineage_chain(metadata: dict) -> None:
    g = _graph(build_dot(metadata))
    labels = _labels(g)
    by_kind = lambda prefix: [n for n, lab in labels.items() if lab.startswith(prefix)]
    (tok,), (ckpt,), (art,), (parent,) = (by_kind("tokenizer:"), by_kind("checkpoint: runs/tiny/step_40"),
                                          by_kind("artifact:"), by_kind("checkpoint: runs/tiny/step_20"))
    sources, shards = by_kind("source:"), by_kind("shard:")
    assert len(sources) == 2 and len(shards) == 3
    edges = {(e.get_source(), e.get_destination()) for e in g.get_edges()}
    assert all((s, tok) in edges for s in sources)
    assert all((tok, sh) in edges and (sh, ckpt) in edges for sh in shards)
    assert {(tok, ckpt), (parent, ckpt), (ckpt, art)} <= edges
    assert "sha256:000000000000" in labels[shards[0]] and "1000 tokens" in labels[shards[0]]
    assert "license: PSF-2.0" in labels[sources[0]] and "license: unknown" in labels[sources[1]]
    assert [sg.get_name() for sg in g.get_subgraphs()] == ["cluster_data"]


def test_labels_with_quotes_and_backslashes_stay_valid(metadata: dict) -> None:
    metadata["data"]["sources"][0]["name"] = 'evil "quoted" \\ name'
    g = _graph(build_dot(metadata))
    assert any("evil" in lab for lab in _labels(g).values())


def test_minimal_metadata_uses_the_run_node(metadata: dict, art: Path) -> None:
    g = _graph(build_dot({"metadata_version": 1, "run": "bare"}, [art / "model.onnx"]))
    labels = _labels(g)
    run = next(n for n, lab in labels.items() if lab.startswith("run: bare"))
    art_node = next(n for n, lab in labels.items() if lab.startswith("artifact:"))
    assert (run, art_node) in {(e.get_source(), e.get_destination()) for e in g.get_edges()}


def test_many_shards_collapse_into_a_summary(metadata: dict) -> None:
    metadata["data"]["shards"] = [{"path": f"s{i}", "sha256": "aa" * 32, "tokens": 10} for i in range(100)]
    labels = _labels(_graph(build_dot(metadata)))
    assert sum(lab.startswith("shard:") for lab in labels.values()) == lineage.MAX_SHARDS
    assert f"+{100 - lineage.MAX_SHARDS} more shards\\n{10 * (100 - lineage.MAX_SHARDS)} tokens" in labels.values()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed (apt-get install graphviz)")
def test_graphviz_renders_png(cli, metadata_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "LINEAGE.dot"
    rc, stdout, err = cli("lineage", "--metadata", metadata_file, "--out", out)
    assert rc == 0 and "note" not in err
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = subprocess.run(["dot", "-Tsvg", str(out)], capture_output=True, text=True, check=True).stdout
    assert "tokenizer: bpe:512" in svg


def test_note_when_graphviz_missing(cli, metadata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    out = tmp_path / "LINEAGE.dot"
    rc, stdout, err = cli("lineage", "--metadata", metadata_file, "--out", out)
    assert rc == 0 and out.is_file() and not out.with_suffix(".png").exists()
    assert "graphviz 'dot' is not installed" in err


def test_malformed_metadata_is_an_error_and_writes_nothing(cli, metadata_file: Path, tmp_path: Path) -> None:
    metadata_file.write_text('{"metadata_version": 1, "run": "x", "data": {"sources": [{"license": "MIT"}]}}')
    rc, _, err = cli("lineage", "--metadata", metadata_file, "--out", tmp_path / "L.dot")
    assert rc == 2 and "data.sources[0].name" in err and not (tmp_path / "L.dot").exists()


def test_write_lineage_without_png(metadata: dict, tmp_path: Path) -> None:
    dot, png, note = write_lineage(tmp_path / "L.dot", metadata, png=False)
    assert dot.is_file() and png is None and note is None


def test_many_sources_collapse_into_a_summary_node():
    from governance.lineage import MAX_SOURCES, build_dot

    md = {"metadata_version": 1, "run": "r",
          "data": {"sources": [{"name": f"f{i}.py", "license": "PSF-2.0" if i % 2 else "MIT"} for i in range(100)],
                   "shards": [{"path": "s0.bin", "sha256": "ab" * 32}]}}
    dot = build_dot(md)
    assert dot.count("source: ") == MAX_SOURCES
    assert f"+{100 - MAX_SOURCES} more sources" in dot and "MIT, PSF-2.0" in dot


def test_out_that_is_the_png_path_is_refused(run_module, cli, metadata_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "L.png"
    out.write_bytes(b"an older picture")
    r = run_module("lineage", "--metadata", metadata_file, "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: lineage.out: {out} is where the PNG is rendered, so it would replace the DOT file" in r.stderr
    assert "--out is the .dot path (e.g. LINEAGE.dot)" in r.stderr
    assert out.read_bytes() == b"an older picture" and sorted(p.name for p in tmp_path.iterdir()) == ["L.png", "train"]
    assert cli("lineage", "--metadata", metadata_file, "--out", out, "--no-png")[0] == 0  # no PNG, no collision
    assert out.read_text().startswith("digraph")
