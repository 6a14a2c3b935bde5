"""``python -m train.run`` end to end with the real stack (TransformerLM, the embedded corpus, the byte tokenizer,
VizSession), its resume, its config errors and its SIGTERM handling."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_testing import REPO, subprocess_env

import dist
from specs.config import ModelConfig, RunConfig
from specs.errors import ConfigError
from specs.io import load_config
from specs.presets import preset
from train.inputs import preflight
from train.run import cli

DEBUG = str(REPO / "cfgs" / "debug.yaml")
FAST = ["--data.seq_len", "32", "--data.batch_size", "4", "--train.log_every", "1", "--train.eval_every", "0",
        "--train.warmup_steps", "1", "--viz.log_every", "1", "--train.callbacks", ""]


def losses(out: Path) -> dict[int, float]:
    with open(out / "logs" / "scalars.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["tag"] == "loss"}


def test_debug_run_writes_loadable_checkpoints_and_logs(tmp_path):
    from data.tokenizer import load_tokenizer
    from model.lm import TransformerLM

    out = tmp_path / "run"
    rc = cli(["--config", DEBUG, *FAST, "--train.steps", "4", "--train.ckpt_every", "2", "--train.eval_every", "4",
              "--train.out_dir", str(out), "--train.callbacks", "governance"])
    assert rc == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    last = out / "checkpoints" / "step_00000004"
    model = TransformerLM.from_pretrained(last)  # what serve/eval/export load
    assert model.config == load_config(DEBUG).model
    assert load_tokenizer(str(last)).vocab_size == 259
    assert (last / "RECEIPT.json").is_file() and (last / "LINEAGE.dot").is_file()  # the governance plugin ran
    md = json.loads((last / "metadata.json").read_text())
    assert md["data"]["manifest_sha256"] and md["data"]["shards"] and md["tokenizer"]["spec"] == "byte"
    assert md["command"][:3] == ["python", "-m", "train.run"]
    assert len(md["git"]["commit"]) == 40 and md["environment"]["torch"]  # run from inside the lmstack repository
    assert md["tokenizer"]["sha256"] == load_tokenizer("byte").fingerprint()
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert (out / "config.yaml").is_file()


def test_ranks_meet_at_a_barrier_before_the_group_is_torn_down_only_after_success(tmp_path, monkeypatch, capsys):
    import dist

    calls = []  # train.run.main's own barrier and teardown (checkpoints have barriers of their own)
    monkeypatch.setattr(dist, "barrier", lambda env: calls.append(f"barrier in {sys._getframe(1).f_code.co_name}"))
    monkeypatch.setattr(dist, "destroy", lambda: calls.append("destroy"))
    assert cli(["--config", DEBUG, *FAST, "--train.steps", "1", "--train.out_dir", str(tmp_path / "ok")]) == 0
    assert calls[-2:] == ["barrier in main", "destroy"]
    calls.clear()
    assert cli(["--config", DEBUG, *FAST, "--train.steps", "1", "--train.out_dir", str(tmp_path / "bad"),
                "--data.path", str(tmp_path / "missing")]) != 0
    assert "barrier in main" not in calls and calls[-1] == "destroy"


def test_resume_auto_continues_the_run_exactly(tmp_path):
    args = ["--config", DEBUG, *FAST, "--train.schedule", "constant", "--train.deterministic", "true"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert cli([*args, "--train.steps", "5", "--train.out_dir", str(full)]) == 0
    assert cli([*args, "--train.steps", "3", "--train.out_dir", str(split)]) == 0
    assert cli([*args, "--train.steps", "5", "--train.out_dir", str(split), "--resume", "auto"]) == 0
    a, b = losses(full), losses(split)
    assert sorted(b) == [1, 2, 3, 4, 5]
    assert [a[s] for s in range(1, 6)] == [b[s] for s in range(1, 6)]  # bitwise: data, RNG, optimizer all restored


def test_a_new_run_does_not_overwrite_an_earlier_runs_checkpoints(tmp_path, capsys):
    args = ["--config", DEBUG, *FAST, "--train.steps", "2", "--train.out_dir", str(tmp_path / "run")]
    assert cli(args) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    before = {p.relative_to(ckpt): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli([*args, "--train.seed", "7"]) == 2  # the same step names: refused before any work
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run (newest step_00000002)" in err and "--train.resume auto" in err
    assert {p.relative_to(ckpt): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before


def test_config_errors_stop_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(["--config", DEBUG, "--train.stepz", "3", "--train.out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.stepz" in err and "did you mean 'steps'" in err and "Traceback" not in err
    assert cli(["--config", DEBUG, "--train.steps", "-1", "--train.out_dir", str(out)]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not out.exists()


def test_missing_dataset_and_unwritable_output(tmp_path, capsys):
    o = str(tmp_path / "o")
    assert cli(["--config", DEBUG, "--data.path", str(tmp_path / "no-shards"), "--train.out_dir", o]) == 2
    assert "data.path" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli(["--config", DEBUG, "--train.out_dir", str(tmp_path / "file" / "run")]) == 2
    assert "train.out_dir" in capsys.readouterr().err
    assert cli(["--config", DEBUG, "--train.resume", str(tmp_path / "nope"), "--train.out_dir", o]) == 2
    assert "train.resume" in capsys.readouterr().err


def test_world_size_must_divide_the_global_batch(tmp_path):
    cfg = load_config(DEBUG, overrides=["--data.batch_size", "8", "--train.out_dir", str(tmp_path)])
    ddp = cfg.replace(dist=cfg.dist.replace(strategy="DDP"))
    with pytest.raises(ConfigError, match="data.batch_size.*world size 3"):
        preflight(ddp, dist.DistEnv(world_size=3))
    with pytest.raises(ConfigError, match="train.grad_accum"):
        preflight(ddp.replace(train=cfg.train.replace(grad_accum=3)), dist.DistEnv(world_size=2))
    with pytest.raises(ConfigError, match="dist.strategy.*unsynchronised"):
        preflight(cfg, dist.DistEnv(world_size=4))
    preflight(cfg.replace(dist=cfg.dist.replace(strategy="DDP")), dist.DistEnv(world_size=4))


def test_bf16_where_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    cfg = load_config(DEBUG, overrides=["--dist.precision", "bf16", "--train.out_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="dist.precision: bf16 needs .*Tesla T4 is 7.5.*fp16"):
        preflight(cfg, dist.DistEnv(device=torch.device("cuda", 0)))
    with pytest.raises(ConfigError, match="conflicts with train.precision"):
        preflight(cfg.replace(train=cfg.train.replace(precision="fp16")), dist.DistEnv())


def test_model_vocabulary_must_cover_the_tokenizer(tmp_path, capsys):
    assert cli(["--config", DEBUG, "--model.vocab_size", "128", "--train.out_dir", str(tmp_path)]) == 2
    assert "model.vocab_size" in capsys.readouterr().err


def test_print_config_and_help(capsys):
    assert cli(["--config", DEBUG, "--dist.strategy", "FSDP", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "strategy: FSDP" in out and "schema_version: 2" in out
    with pytest.raises(SystemExit) as exc:
        cli(["--help"])
    assert exc.value.code == 0 and "--resume" in capsys.readouterr().out


def test_shipped_configs():
    small = load_config(REPO / "cfgs" / "llm_small.yaml").model
    seed = ModelConfig(d_model=512, n_heads=8, n_layers=8, d_ff=2048, vocab_size=32000, attn_impl="flash")
    assert {k: getattr(small, k) for k in ("d_model", "n_heads", "n_layers", "d_ff", "vocab_size", "attn_impl")} == \
        {k: getattr(seed, k) for k in ("d_model", "n_heads", "n_layers", "d_ff", "vocab_size", "attn_impl")}
    for name, ref in (("gpt2_124m", "gpt2-124m"), ("llama_1b", "llama-1b")):
        cfg: RunConfig = load_config(REPO / "cfgs" / f"{name}.yaml")
        want = preset(ref)
        assert {k: v for k, v in cfg.model.to_dict().items() if k != "attn_impl"} == \
            {k: v for k, v in want.to_dict().items() if k != "attn_impl"}
        assert cfg.data.batch_size % (8 * cfg.train.grad_accum) == 0  # fits one 8-GPU node as shipped
    seeded = load_config(REPO / "cfgs" / "llm_small.yaml", overrides=[
        "--dist.strategy", "FSDP", "--dist.precision", "bf16", "--dist.grad_ckpt", "true", "--viz.backend", "csv",
        "--viz.profile_every_n_steps", "500"])  # the seed's command line parses
    assert seeded.dist.strategy == "FSDP" and seeded.viz.backend == ("csv",)


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.run", "--config", DEBUG, *FAST, "--train.steps", "100000",
         "--train.out_dir", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=subprocess_env())
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        seen.append(line)
        if "step 2/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    log = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGTERM, log
    ckpts = sorted((out / "checkpoints").iterdir())
    assert len(ckpts) == 1 and int(ckpts[0].name.split("_")[1]) >= 2, log
    assert "stopped by signal 15" in log
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["step"] == int(ckpts[0].name.split("_")[1])
