"""``python -m interpret lens|trace|sae`` on a saved transformers Llama with its tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from interpret import SparseAutoencoder, causal_trace, lens_report
from interpret.__main__ import main, subject_positions

TEXT = "The Eiffel Tower is in the city of"


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_lens(llama, capsys):
    from data.tokenizer.loading import load_tokenizer

    _, ours, d = llama
    doc = _json(capsys, ["lens", "--model", str(d), "--text", TEXT, "--target", " Paris", "--k", "2", "--json"])
    want = lens_report(ours, load_tokenizer(str(d)), TEXT, k=2, target=" Paris")
    assert json.loads(json.dumps(want)) == doc
    assert main(["lens", "--model", str(d), "--text", TEXT]) == 0
    out = capsys.readouterr().out
    assert out.count("layer") == 4 and "KL" in out


def test_trace(llama, capsys):
    from data.tokenizer.loading import load_tokenizer

    _, ours, d = llama
    tok = load_tokenizer(str(d))
    ids = tok.encode(TEXT)
    subject = subject_positions(tok, TEXT, ids, "Eiffel Tower")
    assert "".join(tok.decode([ids[i]]) for i in subject).strip() == "Eiffel Tower"
    doc = _json(capsys, ["trace", "--model", str(d), "--text", TEXT, "--subject", "Eiffel Tower", "--target",
                         " Paris", "--samples", "3", "--point", "mlp_out", "--window", "3", "--json"])
    r = causal_trace(ours, torch.tensor([ids]), subject, tok.encode(" Paris")[0], samples=3, point="mlp_out",
                     window=3)
    assert doc["subject"] == subject and doc["clean"] == pytest.approx(r.clean)
    torch.testing.assert_close(torch.tensor(doc["effects"]), r.effects)
    assert main(["trace", "--model", str(d), "--text", TEXT, "--subject", "Louvre", "--target", " Paris"]) == 2
    assert "--subject 'Louvre' does not occur in --text" in capsys.readouterr().err


def test_sae(llama, tmp_path, capsys):
    from conftest import TEXTS

    _, _, d = llama
    data = tmp_path / "corpus.txt"
    data.write_text(" ".join(TEXTS * 20))
    doc = _json(capsys, ["sae", "--model", str(d), "--data", str(data), "--layer", "1", "--d-sae", "64", "--k", "4",
                         "--steps", "60", "--seq-len", "32", "--out", str(tmp_path / "sae")])
    assert doc["activations"] % 32 == 0 and doc["activations"] > 100 and doc["l0"] <= 4 and 0 <= doc["fvu"] < 1
    sae = SparseAutoencoder.load(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert sae.d_in == 32 and sae.k == 4 and cfg["hook_name"] == "resid_post.1" and cfg["layer"] == 1


def test_errors_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interpret", "lens", "--model", str(tmp_path / "none"), "--text",
                           "x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is neither a checkpoint directory nor a preset" in proc.stderr
