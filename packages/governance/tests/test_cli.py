"""CLI surface: help that explains, usage errors without tracebacks, atomic writes that never leave half a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from governance._io import write_atomic


def test_help_lists_every_command(run_module) -> None:
    r = run_module("--help")
    assert r.returncode == 0
    for cmd in ("sbom", "sign", "keygen", "receipt", "lineage", "card", "verify"):
        assert cmd in r.stdout
    assert "python -m governance sign --files" in r.stdout
    r = run_module("sbom", "--help")
    assert r.returncode == 0 and "SOURCE_DATE_EPOCH" in r.stdout and "--artifacts" in r.stdout


def test_usage_errors_exit_2(run_module) -> None:
    r = run_module("sbom", "--out", "x.json")
    assert r.returncode == 2 and "--name" in r.stderr and "Traceback" not in r.stderr
    r = run_module("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "CHECKSUMS.sha256"
    write_atomic(target, "old\n")
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new content that never lands\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CHECKSUMS.sha256"]  # temp file cleaned up


def test_directories_where_files_are_expected_are_clear_errors(cli, art: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for args in (("sbom", "--out", out, "--name", "m", "--artifacts", art / "model.onnx"),
                 ("sign", "--files", art / "model.onnx", "--out", out),
                 ("card", art / "model.onnx", "--out", out)):
        rc, _, err = cli(*args)
        assert rc == 2 and f"cannot write {out}: it is a directory; expected a file path" in err, (args, err)
    rc, _, err = cli("sbom", "--out", tmp_path / "S.json", "--name", "m", "--artifacts", art)
    assert rc == 2 and f"{art} is a directory; expected a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "out"] and not any(out.iterdir())


def test_an_output_that_is_also_an_input_is_refused(cli, art: Path, metadata_file: Path) -> None:
    model = art / "model.onnx"
    before = model.read_bytes(), metadata_file.read_bytes()
    for args in (("sign", "--files", model, "--out", model),
                 ("sbom", "--out", model, "--name", "m", "--artifacts", model),
                 ("lineage", "--metadata", metadata_file, "--out", metadata_file, "--no-png"),
                 ("card", model, "--out", model.with_suffix(".md"), "--metadata", model.with_suffix(".json"))):
        rc, _, err = cli(*args)
        assert rc == 2 and "is also an input" in err and "choose another --out" in err, (args, err)
    assert (model.read_bytes(), metadata_file.read_bytes()) == before
