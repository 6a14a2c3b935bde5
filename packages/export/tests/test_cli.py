"""``python -m export``: help, errors with exit status 2 and no traceback, dotted overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from export.cli import _parser, build_config, main


def test_help_explains():
    res = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for word in ("--model", "--target", "--quantize", "--outdir", "modelcard.json"):
        assert word in res.stdout


def test_missing_model_dir_exits_2_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "export", "--model", str(tmp_path / "nope"), "--outdir",
                          str(tmp_path / "a")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("error: --model:") and "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists()


def test_flags_config_file_and_dotted_overrides(tmp_path):
    doc = tmp_path / "run.yaml"
    doc.write_text("model: {d_model: 8}\nexport:\n  target: torch_export\n  opset: 20\n  quantize: int8\n")
    args, rest = _parser().parse_known_args(["--model", "m", "--config", str(doc), "--quantize", "none",
                                             "--no-hooks", "--with_cache", "false"])
    cfg = build_config(args, rest)
    assert (cfg.target, cfg.opset, cfg.quantize, cfg.with_cache, cfg.hooks) == ("torch_export", 20, "none", False, ())


def test_bad_override_exits_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--with_cahce", "false"]) == 2
    err = capsys.readouterr().err
    assert "with_cahce" in err and "did you mean 'with_cache'" in err


@pytest.fixture
def saved_llama(tmp_path):
    import torch

    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    d = tmp_path / "ckpt"
    TransformerLM(preset("llama-debug")).save_pretrained(d)
    return d


def test_unsupported_opset_exits_2(saved_llama, tmp_path, capsys):
    rc = main(["--model", str(saved_llama), "--target", "onnx", "--opset", "17", "--outdir", str(tmp_path / "a")])
    assert rc == 2 and "opset 17 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_run_config_without_export_section_and_negative_atol_exit_2(saved_llama, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text("name: debug\nmodel: {d_model: 8}\ntrain: {steps: 5}\n")
    assert main(["--model", str(saved_llama), "--config", str(run), "--outdir", str(tmp_path / "a")]) == 2
    assert f"{run} is a run config with no export: section" in capsys.readouterr().err
    assert main(["--model", str(saved_llama), "--atol", "-1", "--outdir", str(tmp_path / "a")]) == 2
    assert "atol: expected a tolerance >= 0 (max |logit diff|), got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before anything was exported
