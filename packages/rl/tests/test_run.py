"""DPO and ORPO from ``python -m train.run`` (``train.preference``, ``data.dataset: preference``), fine-tuning a
transformers Llama directory: the preference is learned, checkpoints load, resuming is exact, grad accumulation
does not change the step, a LoRA run's reference is its base model, and bad configs stop before any work."""

from __future__ import annotations

import contextlib
import csv

import pytest
import torch
import yaml

from model.lm import TransformerLM
from train.run import cli


def _config(tmp_path, init_from, pairs, **train):
    doc = {"name": "dpo",
           "data": {"dataset": "preference", "path": str(pairs), "seq_len": 48, "batch_size": 4, "pack": False,
                    "val_fraction": 0.25},
           "train": {"steps": 4, "lr": 2e-3, "warmup_steps": 1, "log_every": 1, "eval_every": 4, "eval_steps": 2,
                     "init_from": str(init_from), "callbacks": [], "schedule": "constant", "weight_decay": 0.0,
                     "preference": {"method": "dpo", "beta": 0.1}, **train},
           "viz": {"backend": ["csv"], "log_every": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def scalars(out):
    rows = {}
    with open(out / "logs" / "scalars.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["tag"], {})[int(r["step"])] = float(r["value"])
    return rows


def test_a_dpo_run_learns_the_preference_and_its_checkpoint_loads(hf_dirs, pairs, tmp_path):
    out = tmp_path / "out"
    assert cli(["--config", _config(tmp_path, hf_dirs[0], pairs, steps=6, eval_every=6), "--train.out_dir",
                str(out)]) == 0
    s = scalars(out)
    assert s["loss"][1] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start: log 2
    assert s["loss"][6] < 0.5 * s["loss"][1]
    assert s["rewards/margins"][6] > 0 and s["rewards/accuracies"][6] == 1.0
    assert s["eval/rewards/accuracies"][6] == 1.0 and s["eval/loss"][6] < 0.5 and "eval/ppl" not in s
    model = TransformerLM.from_pretrained(out / "checkpoints" / "step_00000006")
    start = TransformerLM.from_pretrained(hf_dirs[0])
    assert any((a - b).abs().max() > 0 for a, b in zip(model.state_dict().values(), start.state_dict().values()))


def test_a_dpo_run_resumes_exactly_and_grad_accum_leaves_the_step_alone(hf_dirs, pairs, tmp_path):
    cfg = _config(tmp_path, hf_dirs[0], pairs, deterministic=True, eval_every=0)
    full, split, accum = tmp_path / "full", tmp_path / "split", tmp_path / "accum"
    assert cli(["--config", cfg, "--train.out_dir", str(full)]) == 0
    assert cli(["--config", cfg, "--train.steps", "2", "--train.out_dir", str(split)]) == 0
    assert cli(["--config", cfg, "--train.out_dir", str(split), "--resume", "auto"]) == 0
    assert cli(["--config", cfg, "--train.grad_accum", "2", "--train.out_dir", str(accum)]) == 0
    a, b, c = scalars(full)["loss"], scalars(split)["loss"], scalars(accum)["loss"]
    assert [a[i] for i in range(1, 5)] == [b[i] for i in range(1, 5)]  # the reference is the starting model again
    assert [c[i] for i in range(1, 5)] == pytest.approx([a[i] for i in range(1, 5)], rel=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_a_precomputed_reference_gives_the_same_run(hf_dirs, pairs, tmp_path, lora):
    """``precompute_reference``: the reference scores every pair (train and held out) before the first step, the
    steps skip its forward, and the losses, statistics and held-out figures are the run's without it."""
    cfg = _config(tmp_path, hf_dirs[0], pairs, eval_every=4)
    extra = ["--train.lora.r", "4", "--train.lr", "1e-2"] if lora else []
    plain, pre = tmp_path / "plain", tmp_path / "pre"
    assert cli(["--config", cfg, *extra, "--train.out_dir", str(plain)]) == 0
    assert cli(["--config", cfg, *extra, "--train.preference.precompute_reference", "true", "--train.out_dir",
                str(pre)]) == 0
    a, b = scalars(plain), scalars(pre)
    for tag in ("loss", "rewards/margins", "logps/chosen", "eval/loss", "eval/rewards/accuracies"):
        assert sorted(a[tag]) == sorted(b[tag])
        assert [b[tag][i] for i in sorted(b[tag])] == pytest.approx([a[tag][i] for i in sorted(a[tag])], rel=1e-4,
                                                                     abs=1e-6), tag
    assert a["loss"][4] < a["loss"][1]


def test_the_precomputed_reference_frees_the_copy(hf_dirs, pairs):
    import types

    from data.tokenizer.loading import load_tokenizer
    from model.lm import TransformerLM
    from rl.data import build_preference_dataloader
    from rl.objectives import DPO
    from specs.config import PreferenceConfig, TrainConfig
    from specs.errors import ConfigError

    tok = load_tokenizer(str(hf_dirs[0]))
    loader = build_preference_dataloader(pairs, 4, 48, tokenizer=tok, shuffle=False)
    model = TransformerLM.from_pretrained(hf_dirs[0])
    obj = DPO(PreferenceConfig(method="dpo", precompute_reference=True))
    module = obj.module(model, train=TrainConfig(), device=torch.device("cpu"))
    reference = module.reference
    batch = next(iter(loader))
    with torch.no_grad():
        want, _ = module(batch.input_ids, batch.labels, attn_mask=batch.attention_mask)  # the reference's forward
    trainer = types.SimpleNamespace(dataloader=loader, eval_dataloader=None, device=torch.device("cpu"),
                                    autocast=contextlib.nullcontext)
    b, _ = obj.prepare(batch, trainer)
    assert module.reference is None and reference is not None  # the copy is dropped after scoring
    assert 0 < len(obj._table) <= 2 * len(loader.pairs)  # every distinct row
    with torch.no_grad():
        got, _ = module(b.input_ids, b.labels, ref_logps=b.ref_logps, attn_mask=b.attention_mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    other = batch.input_ids.clone()
    other[0, 0] = (other[0, 0] + 1) % 100
    with pytest.raises(ConfigError, match="is not from the Trainer's loaders"):
        obj.prepare(type(batch)(input_ids=other, labels=batch.labels, attention_mask=batch.attention_mask), trainer)


def test_a_lora_runs_reference_is_its_base_model(hf_dirs, pairs, tmp_path):
    """With train.lora the reference is the model with its adapters off (no copy); a frozen copy of the starting
    weights gives the same losses, as it must: the base weights do not train."""
    lora = ["--train.lora.r", "4", "--train.lora.targets", "q_proj,v_proj,down_proj", "--train.lr", "1e-2"]
    cfg = _config(tmp_path, hf_dirs[0], pairs, eval_every=0)
    adapters, copy = tmp_path / "adapters", tmp_path / "copy"
    assert cli(["--config", cfg, *lora, "--train.out_dir", str(adapters)]) == 0
    assert cli(["--config", cfg, *lora, "--train.preference.reference", "copy", "--train.out_dir", str(copy)]) == 0
    a, b = scalars(adapters), scalars(copy)
    assert a["loss"][1] == pytest.approx(0.6931, abs=1e-4) and a["loss"][4] < a["loss"][1] - 0.05
    assert [a["loss"][i] for i in range(1, 5)] == pytest.approx([b["loss"][i] for i in range(1, 5)], rel=1e-5)
    assert (adapters / "checkpoints" / "step_00000004" / "adapter" / "adapter_config.json").is_file()


def test_an_orpo_run_learns_the_preference_without_a_reference(hf_dirs, pairs, tmp_path):
    out = tmp_path / "orpo"
    cfg = _config(tmp_path, hf_dirs[0], pairs, steps=6, eval_every=0, preference={"method": "orpo", "beta": 0.5})
    assert cli(["--config", cfg, "--train.out_dir", str(out)]) == 0
    s = scalars(out)
    assert s["loss"][6] < s["loss"][1] and s["nll_loss"][6] < s["nll_loss"][1]
    assert s["log_odds_chosen"][6] > s["log_odds_chosen"][1] and s["rewards/accuracies"][6] == 1.0


@pytest.mark.parametrize("method", ["simpo", "cpo"])
def test_reference_free_runs_learn_the_preference(hf_dirs, pairs, tmp_path, method):
    out = tmp_path / method
    cfg = _config(tmp_path, hf_dirs[0], pairs, steps=6, eval_every=6,
                  preference={"method": method, "beta": 2.0 if method == "simpo" else 0.1})
    assert cli(["--config", cfg, "--train.out_dir", str(out)]) == 0
    s = scalars(out)
    assert s["loss"][6] < s["loss"][1] and s["eval/rewards/accuracies"][6] == 1.0
    assert s["eval/rewards/margins"][6] > 0


@pytest.mark.parametrize("args,field", [
    (["--data.dataset", "chat"], "data.dataset"),
    (["--train.preference.reference", "adapters"], "train.preference.reference"),
    (["--train.preference.loss_type", "kto"], "train.preference.loss_type"),
    (["--train.preference.label_smoothing", "0.1"], "train.preference.label_smoothing"),
    (["--train.preference.method", "orpo", "--train.preference.sft_weight", "1"], "train.preference.sft_weight"),
    (["--train.preference.method", "ppo"], "train.preference.method"),
    (["--data.pack", "true"], "data.pack"),
    (["--train.preference.method", "simpo", "--train.preference.loss_type", "hinge"], "train.preference.loss_type"),
    (["--train.preference.simpo_gamma", "1.0"], "train.preference.simpo_gamma"),
])
def test_bad_preference_configs_stop_before_any_work(hf_dirs, pairs, tmp_path, capsys, args, field):
    out = tmp_path / "out"
    cfg = _config(tmp_path, hf_dirs[0], pairs)
    assert cli(["--config", cfg, *args, "--train.out_dir", str(out)]) == 2
    assert field in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


def test_pairs_without_a_preference_objective_are_refused(hf_dirs, pairs, tmp_path, capsys):
    with open(_config(tmp_path, hf_dirs[0], pairs)) as f:
        doc = yaml.safe_load(f)
    del doc["train"]["preference"]
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(doc))
    assert cli(["--config", str(tmp_path / "plain.yaml"), "--train.out_dir", str(tmp_path / "o")]) == 2
    assert "preference pairs (chosen, rejected), but no objective for them is set" in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.parametrize("strategy,lora", [("DDP", False), ("FSDP", True)])
def test_dpo_under_torchrun_matches_one_process(hf_dirs, pairs, tmp_path, strategy, lora):
    """Two gloo ranks: DDP with a copied reference, FSDP2 with a LoRA run's adapters-off reference (a second,
    gradient-free forward through the sharded model); the losses and statistics of one process."""
    import os
    import subprocess
    import sys

    cfg = _config(tmp_path, hf_dirs[0], pairs, eval_every=0, steps=3, device="cpu")
    extra = ["--train.lora.r", "4", "--train.lora.targets", "q_proj,v_proj,down_proj", "--train.lr", "1e-2"] \
        if lora else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.run",
           "--config", cfg, *extra, "--dist.strategy", strategy, "--train.out_dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "2 rank(s)" in proc.stderr
    assert cli(["--config", cfg, *extra, "--train.out_dir", str(tmp_path / "one")]) == 0
    two, one = scalars(tmp_path / "two"), scalars(tmp_path / "one")
    for tag in ("loss", "rewards/margins", "logps/chosen"):
        for step in (1, 2, 3):
            assert two[tag][step] == pytest.approx(one[tag][step], rel=2e-4, abs=1e-5), (tag, step)
    assert one["loss"][3] < one["loss"][1]
