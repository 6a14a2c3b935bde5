"""Two gloo processes (torchrun): DDP, FSDP2 and ZeRO-1 training matches one process on the same global batches,
and checkpoints move between world sizes (2 ranks -> 1 process and 1 process -> 2 ranks under FSDP).
The seed's torchrun command runs on the debug config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_common import make_trainer
from train_testing import HERE, REPO, Recorder, subprocess_env

import dist

pytestmark = pytest.mark.dist


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=REPO)


def close(a: dict, b: dict, steps) -> None:
    for s in steps:
        assert a[s] == pytest.approx(b[s], rel=2e-4, abs=1e-5), (s, a, b)


def test_strategies_match_one_process_and_checkpoints_cross_world_sizes(tmp_path):
    one = dist.DistEnv()
    rec = Recorder()
    make_trainer(tmp_path / "single", "none", one, rec).fit()
    ref = rec.losses()
    part = make_trainer(tmp_path / "single_part", "none", one)
    part.fit(steps=3)
    single_ckpt = tmp_path / "single_part" / "checkpoints" / "step_00000003"

    proc = torchrun(str(HERE / "trainer_worker.py"), str(tmp_path), str(single_ckpt))
    assert proc.returncode == 0, proc.stderr[-6000:]
    raw = json.loads((tmp_path / "result.json").read_text())
    result = {k: {int(s): v for s, v in d.items()} for k, d in raw.items()}
    for strategy in ("DDP", "FSDP", "ZeRO1"):
        assert sorted(result[strategy]) == [1, 2, 3, 4, 5, 6]
        close(result[strategy], ref, range(1, 7))
    close(result["FSDP_from_single"], ref, range(4, 7))  # 1 process -> 2 ranks

    fsdp_ckpt = tmp_path / "FSDP" / "checkpoints" / "step_00000003"
    shards = sorted(p.name for p in (fsdp_ckpt / "optimizer").glob("*.safetensors"))
    assert len(shards) == 2  # each rank wrote its own optimizer shard
    for strategy in ("FSDP", "ZeRO1"):  # 2 ranks -> 1 process, also across strategies
        rec = Recorder()
        trainer = make_trainer(tmp_path / f"from_{strategy}", "none", one, rec)
        trainer.resume(str(tmp_path / strategy / "checkpoints" / "step_00000003"))
        trainer.fit()
        close(rec.losses(), ref, range(4, 7))


def test_seed_command_under_torchrun(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("-m", "train.run", "--config", "cfgs/debug.yaml", "--train.device", "cpu",
                    "--dist.strategy", "FSDP", "--dist.precision", "bf16", "--dist.grad_ckpt", "true",
                    "--viz.backend", "csv", "--viz.profile_every_n_steps", "500",
                    "--train.steps", "3", "--train.out_dir", str(out), "--data.seq_len", "32",
                    "--train.eval_every", "0", "--train.log_every", "1", "--train.callbacks", "")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "2 rank(s)" in proc.stderr and "strategy FSDP, precision bf16" in proc.stderr
    ckpt = out / "checkpoints" / "step_00000003"
    assert len(list((ckpt / "optimizer").glob("*.safetensors"))) == 2
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["strategy"] == "FSDP"
    # resume it in one process without FSDP
    from train.run import cli

    rc = cli(["--config", str(REPO / "cfgs" / "debug.yaml"), "--train.steps", "4", "--train.out_dir", str(out),
              "--data.seq_len", "32", "--train.eval_every", "0", "--train.callbacks", "", "--resume", "auto"])
    assert rc == 0
    assert (out / "checkpoints" / "step_00000004" / "model.safetensors").is_file()
    assert Path(out / "logs" / "scalars.csv").is_file()


@pytest.mark.parametrize(("strategy", "extra"), [("FSDP", []), ("DDP", ["--train.lora.quantize_base", "nf4"]),
                                                  ("FSDP", ["--train.lora.quantize_base", "nf4"])])
def test_a_lora_run_under_torchrun_matches_one_process(tmp_path, strategy, extra):
    """train.lora under torchrun with FSDP2 (the frozen base sharded beside the adapters), and QLoRA under DDP (the
    4-bit base whole on each rank, written once by rank 0): the losses of one process, and a checkpoint whose
    merged model is the one-process run's."""
    import csv

    import torch

    from model.lm import TransformerLM
    from train.run import cli

    args = ["--config", str(REPO / "cfgs" / "debug.yaml"), "--train.device", "cpu", "--train.steps", "3",
            "--data.seq_len", "32", "--data.batch_size", "4", "--train.eval_every", "0", "--train.log_every", "1",
            "--viz.log_every", "1", "--train.callbacks", "", "--train.lora.r", "4", "--train.lora.targets",
            "q_proj,v_proj,down_proj", "--train.lr", "1e-2", *extra]
    proc = torchrun("-m", "train.run", *args, "--dist.strategy", strategy, "--train.out_dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert cli([*args, "--train.out_dir", str(tmp_path / "one")]) == 0

    def losses(run):
        with open(tmp_path / run / "logs" / "scalars.csv", newline="") as f:
            return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["tag"] == "loss"}

    close(losses("fsdp"), losses("one"), range(1, 4))
    ckpt = "checkpoints/step_00000003"
    assert (tmp_path / "fsdp" / ckpt / "adapter" / "adapter_model.safetensors").is_file()
    ids = torch.randint(0, 259, (2, 9))
    a, b = (TransformerLM.from_pretrained(tmp_path / run / ckpt).eval() for run in ("fsdp", "one"))
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), rtol=2e-4, atol=2e-4)


def test_fsdp_shards_a_qlora_base_and_computes_what_one_process_computes(tmp_path):
    """Under FSDP each rank holds half of every 4-bit layer's bytes (uint8, not cast by mixed precision); one
    forward and backward give the unsharded model's loss and adapter gradients; a checkpoint written shard by
    shard loads back into another sharded model."""
    proc = torchrun(str(HERE / "qlora_worker.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads((tmp_path / "result.json").read_text())
    layers = result["layers"]
    assert result["world"] == 2 and len(layers) == 7 * 2  # q/k/v/o/gate/up/down in each of llama-debug's 2 blocks
    for name, layer in layers.items():
        assert layer["sharded"] and layer["dtype"] == "torch.uint8", (name, layer)
        assert layer["local"] == -(-layer["bytes"] // 2), (name, layer)  # rank 0's half (rounded up)
    whole, sharded, mixed = result["losses"]
    assert sharded == pytest.approx(whole, rel=1e-6)
    assert mixed == pytest.approx(whole, rel=2e-2) and mixed != whole  # bf16 compute over the same 4-bit weights
    assert result["grad_diff"] < 1e-6
    before, reloaded = result["reload"]
    assert reloaded == sharded and before != sharded  # the 4-bit bytes and adapters came back shard by shard
