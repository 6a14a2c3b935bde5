"""python -m eval.bench: bad options exit 2 with a message naming the option and what was expected, before anything
runs or is written (the subcommands' ``run`` is replaced by one that fails the test if it is reached)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import httpx
import pytest

from eval.bench import SUBCOMMANDS
from eval.bench.common import write_json
from specs.errors import ConfigError


def _never(args):
    pytest.fail(f"{args.command} started its benchmark on bad input")


NEVER = {name: dataclasses.replace(cmd, run=_never) for name, cmd in SUBCOMMANDS.items()}
DEVICE = "argument --device: expected auto, or a torch device such as cpu, cuda or cuda:0, got 'nope'"
URL = ["--url", "http://127.0.0.1:18799"]


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--device", "nope"], DEVICE),
    (["train-step", "--preset", "debug", "--device", "nope"], DEVICE),
    (["engine", "--preset", "llama-debug", "--prompt-tokens", "8", "--new-tokens", "8", "--device", "nope"], DEVICE),
    (["decode", "--device", "cuda:x"], "argument --device: expected auto, or a torch device"),
    (["train-compare", "--device", "gpu"], "argument --device: expected auto, or a torch device"),
    (["train-compare", "--device", "cpu", "--preset", "debug", "--steps", "0"],
     "argument --steps: must be >= 1, got 0"),
    (["train-compare", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (["train-compare", "--profile-top", "0"], "argument --profile-top: must be >= 1, got 0"),
    (["train-step", "--steps", "x"], "argument --steps: expected an integer >= 1, got 'x'"),
    (["train-step", "--seq-len", "1"], "argument --seq-len: must be >= 2, got 1"),
    (["generate", "--new-tokens", "1"], "argument --new-tokens: must be >= 2 (the decode rate times the tokens after"),
    (["generate", "--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    (["generate", "--batch-sizes", "1,0"], "argument --batch-sizes: expected comma-separated integers >= 1"),
    (["decode", "--device", "cpu", "--preset", "llama-debug", "--batch-sizes", "0"],
     "argument --batch-sizes: expected comma-separated integers >= 1 such as 1,4,8, got '0'"),
    (["decode", "--prompt-tokens", "0"], "argument --prompt-tokens: must be >= 1, got 0"),
    (["engine", "--concurrency", "0"], "argument --concurrency: must be >= 1, got 0"),
    (["engine", "--warmup", "-2"], "argument --warmup: must be >= 0, got -2"),
    (["server", *URL, "--timeout", "-1"], "argument --timeout: must be > 0 seconds, got -1"),
    (["server", *URL, "--timeout", "nan"], "argument --timeout: must be > 0 seconds, got nan"),
    (["server", *URL, "--requests", "0"], "argument --requests: must be >= 1, got 0"),
    (["fsdp", "--device", "cpu", "--timeout", "0"], "argument --timeout: must be > 0 seconds, got 0"),
    (["fsdp", "--device", "cpu", "--seq", "0"], "argument --seq: must be >= 1, got 0"),
    (["train-compare", "--device", "cpu", "--preset", "debug", "--variants", "nosuch"],
     "argument --variants: unknown 'nosuch'; valid (comma-separated): lmstack, lmstack-fused, transformers"),
    (["decode", "--device", "cpu", "--preset", "llama-debug", "--variants", "lmstack,nosuch"],
     "argument --variants: unknown 'nosuch'; valid (comma-separated): lmstack, lmstack-int8, transformers, "
     "lmstack-pdl, lmstack-int8-pdl, lmstack-nopdl, lmstack-int8-nopdl"),
    (["decode", "--variants", ","], "argument --variants: none given in ','"),
    (["engine", "--variants", "lmstack,vllm"], "argument --variants: unknown 'vllm'; valid (comma-separated): lmstack"),
])
def test_bad_options_exit_2_before_the_benchmark(fails_with, argv, message):
    fails_with(argv, message, NEVER)


MINIMAL = {"server": URL, "fsdp": ["--device", "cpu"]}  # the options each subcommand needs to parse


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_out_is_checked_before_the_benchmark_and_nothing_is_written(fails_with, tmp_path, command):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "afile").write_text("kept\n")
    base = [command, *MINIMAL.get(command, [])]
    fails_with([*base, "--out", str(tmp_path / "emptydir")],
               f"argument --out: {tmp_path / 'emptydir'} is a directory; expected a file path", NEVER)
    fails_with([*base, "--out", str(tmp_path / "afile" / "x.json")],
               f"argument --out: cannot write {tmp_path / 'afile' / 'x.json'}: {tmp_path / 'afile'} is not a directory",
               NEVER)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "emptydir"]
    assert (tmp_path / "afile").read_text() == "kept\n"


def test_the_audited_out_directory_case_runs_nothing(fails_with, tmp_path, monkeypatch):
    """The real generate command (not a stand-in): no model is loaded and the directory stays empty."""
    import eval.bench.generate as generate

    monkeypatch.setattr(generate, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "emptydir").mkdir()
    fails_with(["generate", "--device", "cpu", "--batch-sizes", "1", "--new-tokens", "2", "--prompt-tokens", "4",
                "--repeat", "1", "--warmup", "0", "--out", str(tmp_path / "emptydir")], "is a directory")
    assert not list((tmp_path / "emptydir").iterdir())


def test_a_failed_run_keeps_an_existing_out_file(fails_with, tmp_path):
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": 1}\n')
    fails_with(["generate", "--device", "cpu", "--prompt-tokens", "4000", "--out", str(out)],
               "error: --prompt-tokens + --new-tokens = 4032 exceeds the model's max_seq_len")
    assert json.loads(out.read_text()) == {"earlier": 1}


def test_out_missing_directories_are_made_when_written(capsys, tmp_path):
    from eval.bench.__main__ import main

    out = tmp_path / "a" / "b" / "bench.json"
    assert main(["generate", "--device", "cpu", "--batch-sizes", "1", "--new-tokens", "2", "--prompt-tokens", "4",
                 "--repeat", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)


def test_write_json_refuses_a_directory_with_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        write_json(tmp_path, {"x": 1})


def test_a_connection_failure_always_has_a_reason(fails_with, monkeypatch):
    import eval.bench.server as server

    async def timeout(args):
        raise httpx.ConnectTimeout("")  # what httpx raised for --timeout -1: no message

    monkeypatch.setattr(server, "_run", timeout)
    fails_with(["server", *URL], "error: cannot benchmark http://127.0.0.1:18799: ConnectTimeout\n")


def test_the_command_line_prints_no_traceback():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "eval.bench", "generate", "--device", "nope"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert DEVICE in r.stderr
