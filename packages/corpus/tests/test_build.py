"""The build CLI end to end: formats, bad input reporting, dedup, PII, licenses, byte identity, loader hand-off."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from corpus.cli import main
from data.loader import build_dataloader
from data.shards import ShardSet
from data.tokenizer import load_tokenizer

MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
       "associated documentation files (the \"Software\"), to deal in the Software without restriction.\n")


def _para(seed: int, n: int = 120) -> str:
    rng = np.random.default_rng(seed)
    words = ["river", "city", "library", "scholar", "trade", "hill", "market", "bridge", "winter", "harvest",
             "letter", "road", "garden", "tower", "festival", "song", "lamp", "stone", "field", "ship"]
    return " ".join(rng.choice(words, size=n)) + ".\n"


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    r = tmp_path / "raw"
    (r / "sub").mkdir(parents=True)
    (r / "a.txt").write_text("Write to alice@example.com or call (212) 555-0199.\n" + _para(1))
    (r / "b.md").write_text("# Title\r\n\r\n" + _para(2) + "Server at 10.1.2.3 and card 4111 1111 1111 1111.\n")
    (r / "sub" / "LICENSE").write_text(MIT)
    (r / "sub" / "c.txt").write_text(_para(3))
    (r / "sub" / "copy.txt").write_text(_para(3))  # exact duplicate of c.txt
    near = _para(3).split()
    near[10] = "different"
    (r / "sub" / "near.txt").write_text(" ".join(near) + "\n")  # near duplicate of c.txt
    (r / "bad.txt").write_bytes(b"line one\nline two\nbad \xff\xfe byte\n")
    (r / "image.png").write_bytes(b"\x89PNG....")
    os.symlink(r / "nowhere.txt", r / "broken.txt")  # unreadable
    recs = [{"id": "j1", "text": _para(4), "source": "web", "metadata": {"license": "apache-2.0"}},
            {"id": "j2", "text": _para(5), "license": "Proprietary-Whatever"}]
    lines = [json.dumps(x) for x in recs] + ['{"id": "j3", "text": ', '{"id": "j4"}', json.dumps({"text": _para(6)})]
    (r / "d.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(r / "e.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"id": "g1", "text": "A\u0301ccented NFC text " + _para(7)}) + "\n")
    return r


def _build(raw: Path, out: Path, *extra: str) -> int:
    return main(["build", "--input", str(raw), "--outdir", str(out), "--redact-pii", "--dedup", "--workers", "1",
                 "--progress", "off", *extra])


def test_build_reports_everything(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    assert _build(raw, out) == 0
    rep = json.loads((out / "report.json").read_text())
    errs = {(e["file"], e["line"]) for e in rep["errors"]["items"]}
    assert ("bad.txt", 3) in errs and ("d.jsonl", 3) in errs and ("d.jsonl", 4) in errs
    assert any(f == "broken.txt" and "unreadable" in e["error"] for f, e in
               ((e["file"], e) for e in rep["errors"]["items"]))
    assert rep["errors"]["count"] == 4 and rep["files"]["unsupported"] == ["image.png"]
    assert rep["documents"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert rep["documents"]["read"] == 9 and rep["documents"]["kept"] == 7
    assert rep["sources"]["web"] == 1 and rep["sources"]["a.txt"] == 1
    assert rep["pii"]["counts"] == {"card": 1, "email": 1, "ipv4": 1, "phone": 1}
    lic = rep["licenses"]
    assert lic["MIT"]["documents"] == 1 and lic["Apache-2.0"]["documents"] == 1
    assert lic["NOASSERTION"]["documents"] == 5 and rep["unrecognised_licenses"] == {"Proprietary-Whatever": 1}
    md = (out / "report.md").read_text()
    assert "bad.txt | 3" in md and "near_duplicate" in md and "<EMAIL>" in md
    shards = ShardSet.open(out, verify=True)
    tok = load_tokenizer(str(out / "tokenizer"))
    assert tok.fingerprint() == shards.tokenizer["fingerprint"]
    texts = [tok.decode(d.tolist()) for d in shards.documents()]
    joined = "".join(texts)
    assert "alice@example.com" not in joined and "<EMAIL>" in joined and "<CARD_NUMBER>" in joined
    assert "\r" not in joined and "\u00c1ccented" in joined  # CRLF unified, NFC composed
    src = {s["name"]: s for s in shards.manifest["sources"]}
    assert src["sub/c.txt"]["license"] == "MIT" and src["sub/copy.txt"]["documents"] == 0
    assert len(src["a.txt"]["sha256"]) == 64


def test_byte_identical_and_workers(raw: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _build(raw, a, "--shard-size-tokens", "300") == 0
    assert _build(raw, b, "--shard-size-tokens", "300", "--workers", "2") == 0
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert any(f.startswith("shard_00002") for f in files)
    for f in files:
        if f != "report.json" and f != "report.md":  # reports carry timings and the output path
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    dl = build_dataloader(a, batch_size=2, seq_len=32, tokenizer=str(a / "tokenizer"))
    assert next(iter(dl)).input_ids.shape == (2, 32)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_on_error_fail(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str) -> None:
    out = tmp_path / "out"
    assert _build(raw, out, "--on-error", "fail", "--workers", workers) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bad.txt:3" in err and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    assert _build(tmp_path / "empty", tmp_path / "o1") == 2
    assert "no input documents" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text(_para(9))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert _build(tmp_path / "in", tmp_path / "o2", "--tokenizer", "gpt2") == 2
    assert "Nothing is downloaded" in capsys.readouterr().err
    assert _build(tmp_path / "missing", tmp_path / "o3") == 2
    with pytest.raises(SystemExit) as exc:
        main(["build", "--help"])
    assert exc.value.code == 0 and "--redact-pii" in capsys.readouterr().out


def test_bpe_tokenizer_trained_on_input(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "bpe"
    assert _build(raw, out, "--tokenizer", "bpe:300") == 0
    m = ShardSet.open(out).manifest
    assert m["tokenizer"]["spec"] == "bpe:300" and m["dtype"] == "uint16" and m["separators"]["eos"]
    tok = load_tokenizer(str(out / "tokenizer"))
    first = next(iter(ShardSet.open(out).documents())).tolist()
    assert first[-1] == tok.eos_id and "<EMAIL>" in tok.decode(first)


def test_embedded_default(tmp_path: Path) -> None:
    out = tmp_path / "emb"
    assert main(["build", "--outdir", str(out), "--embedded-budget-bytes", "150000", "--dedup", "--redact-pii",
                 "--progress", "off"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["input"].startswith("embedded:python-stdlib") and rep["documents"]["kept"] > 0
    assert "PSF-2.0" in rep["licenses"]
    assert ShardSet.open(out, verify=True).num_tokens > 100_000
