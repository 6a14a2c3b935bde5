"""Bad options and output paths: `error: ...` with exit status 2, before any input is read, nothing written or lost."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from corpus import pipeline
from corpus.cli import main
from corpus.pii import PiiRedactor
from corpus.pipeline import BuildConfig, build
from corpus.quality import QualityConfig
from specs.errors import ConfigError


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    r = tmp_path / "raw"
    r.mkdir()
    words = ["river", "city", "library", "scholar", "trade", "hill", "market", "bridge", "winter", "harvest"]
    for i in range(3):
        rng = random.Random(i)
        (r / f"{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(200)) + ".\n")
    return r


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the input fails the test: the checks must come before any work."""
    def read_all(cfg: BuildConfig) -> Any:
        raise AssertionError("the input was read before the options were checked")

    monkeypatch.setattr(pipeline, "_read_all", read_all)


def _build(raw: Path, out: Path, *extra: str) -> int:
    return main(["build", "--input", str(raw), "--outdir", str(out), "--workers", "1", "--progress", "off", *extra])


@pytest.mark.parametrize(("args", "message"), [
    (["--dedup", "--num-perm", "0"], "error: --num-perm: must be an integer >= 2, got 0"),
    (["--dedup", "--num-perm", "-3"], "error: --num-perm: must be an integer >= 2, got -3"),
    (["--dedup", "--near-dup-threshold", "0.99"], "--num-perm: 128 permutations are too few for "
                                                  "--near-dup-threshold 0.99"),
    (["--near-dup-threshold", "1"], "error: --near-dup-threshold: must be in (0, 1), got 1.0"),
    (["--near-dup-threshold", "0"], "error: --near-dup-threshold: must be in (0, 1), got 0.0"),
    (["--min-chars", "-5"], "error: quality.min_chars: must be an integer >= 0, got -5"),
    (["--max-words", "-1"], "error: quality.max_words: must be an integer >= 0, got -1"),
    (["--min-words", "10", "--max-words", "5"], "error: quality.min_words: must be <= max_words (5), got 10"),
    (["--max-hash-ratio", "2"], "error: quality.max_hash_ratio: must be a ratio in [0, 1], got 2.0"),
    (["--max-dup-line-frac", "-0.1"], "error: quality.max_dup_line_frac: must be a ratio in [0, 1], got -0.1"),
    (["--max-dup-line-char-frac", "nan"], "error: quality.max_dup_line_char_frac: must be a ratio in [0, 1]"),
    (["--shard-size-tokens", "0"], "error: --shard-size-tokens: must be an integer >= 1, got 0"),
    (["--workers", "0"], "error: --workers: must be an integer >= 1, got 0"),
    (["--embedded-budget-bytes", "-1"], "error: --embedded-budget-bytes: must be an integer >= 1, got -1"),
    (["--redact-pii", "--phone-region", "ZZZ"], "error: --phone-region: unknown region 'ZZZ'; expected a "
                                                "two-letter region code that phonenumbers knows, e.g. US, GB"),
    (["--redact-pii", "--phone-region", "us"], "unknown region 'us' (did you mean 'US'?)"),
    (["--tokenizer", "bpe:0"], "error: tokenizer: bpe vocab_size must be >= 261 (256 bytes + specials), got 0"),
    (["--tokenizer", "bpe:lots"], "error: tokenizer: 'bpe:lots': expected bpe:<vocab_size> with an integer"),
    (["--tokenizer", "./no/tokenizer.json"], "error: tokenizer: './no/tokenizer.json' does not exist"),
])
def test_bad_option_exits_2_before_any_work(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            no_work: None, args: list[str], message: str) -> None:
    assert _build(raw, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no output, no spool or staging directory


def test_count_overrides_are_integers(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's usage error; 2.5 was truncated to 2
        _build(raw, tmp_path / "out", "--min-chars", "2.5")
    assert exc.value.code == 2 and "argument --min-chars: invalid int value: '2.5'" in capsys.readouterr().err


def test_num_perm_0_has_no_traceback_from_python_dash_m(raw: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "corpus.cli", "build", "--input", str(raw), "--outdir",
                          str(tmp_path / "out"), "--dedup", "--num-perm", "0", "--progress", "off"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr == "error: --num-perm: must be an integer >= 2, got 0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_outdir_that_is_a_file_is_refused_and_kept(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   no_work: None, overwrite: list[str]) -> None:
    # --overwrite replaced the file with a shard directory and left .afile.old-PID behind; without it, an empty
    # file was reported as "exists and is not empty".
    for content in (b"", b"keep me"):
        afile = tmp_path / "afile"
        afile.write_bytes(content)
        assert _build(raw, afile, *overwrite) == 2
        err = capsys.readouterr().err
        assert err == f"error: --outdir: {afile} exists and is not a directory; expected a directory path (a file " \
                      "is never replaced, even with --overwrite)\n"
        assert afile.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "raw"]
    assert _build(raw, tmp_path / "afile" / "sub", *overwrite) == 2
    err = capsys.readouterr().err
    assert f"cannot create {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is not a directory" in err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "raw"]


def test_non_empty_outdir_needs_overwrite(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _build(raw, out) == 2
    assert "--outdir: " + str(out) + " exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert _build(raw, out, "--overwrite") == 0 and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no .out.old-PID left behind


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_perm": 1}, r"--num-perm: must be an integer >= 2, got 1"),
    ({"near_dup_threshold": 1.5}, r"--near-dup-threshold: must be in \(0, 1\)"),
    ({"shard_size_tokens": 0}, r"--shard-size-tokens: must be an integer >= 1"),
    ({"shingle_size": 0}, r"shingle_size: must be an integer >= 1"),
    ({"phone_region": "ZZZ"}, r"--phone-region: unknown region 'ZZZ'"),
])
def test_build_config_refuses_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BuildConfig(input=None, outdir="x", **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_chars": -5}, r"quality.min_chars: must be an integer >= 0, got -5"),
    ({"min_stop_words": 1.5}, r"quality.min_stop_words: must be an integer >= 0, got 1.5"),
    ({"max_hash_ratio": 2}, r"quality.max_hash_ratio: must be a ratio in \[0, 1\], got 2"),
    ({"min_alpha_words": float("nan")}, r"quality.min_alpha_words: must be a ratio in \[0, 1\]"),
    ({"min_mean_word_len": -1}, r"quality.min_mean_word_len: must be a length >= 0"),
    ({"min_chars": 10, "max_chars": 5}, r"quality.min_chars: must be <= max_chars \(5\), got 10"),
    ({"max_top_ngram_char_frac": ((0, 0.2),)}, r"max_top_ngram_char_frac: expected \(n >= 1, ratio in \[0, 1\]\)"),
    ({"max_dup_ngram_char_frac": ((5, 1.5),)}, r"max_dup_ngram_char_frac: expected"),
])
def test_quality_config_refuses_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QualityConfig(**kwargs)
    with pytest.raises(ConfigError, match=match):
        replace(QualityConfig.gopher(), **kwargs)  # what the CLI's overrides do


def test_python_api_refuses_before_any_work(raw: Path, tmp_path: Path, no_work: None) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        build(BuildConfig(input=str(raw), outdir=str(afile), overwrite=True))
    with pytest.raises(ConfigError, match="permutations are too few"):
        build(BuildConfig(input=str(raw), outdir=str(tmp_path / "out"), dedup=True, near_dup_threshold=0.99))
    assert afile.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "raw"]


def test_pii_redactor_refuses_an_unknown_region() -> None:
    with pytest.raises(ConfigError, match=r"phone_region: unknown region 'ZZZ'.*e\.g\. US, GB"):
        PiiRedactor(phone_region="ZZZ")
