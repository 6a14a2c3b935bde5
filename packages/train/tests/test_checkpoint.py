"""Checkpoints: layout and metadata, bitwise resume, keep-last-k, atomicity, corrupt and missing checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_testing import Recorder, TinyLM, TokenLoader

import dist
from specs.config import DataConfig, RunConfig, TrainConfig
from specs.errors import ConfigError
from specs.metadata import load_metadata
from specs.modelcard import ModelCard
from train import CheckpointError, Trainer
from train import checkpoint as ckpt
from train.checkpoint import check_writable


class FakeTokenizer:
    spec, vocab_size = "fake", 64

    def fingerprint(self) -> str:
        return "ab" * 32

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer.json").write_text('{"fake": true}')
        return Path(directory)


def make(tmp_path, *, steps=6, optimizer="adamw", dropout=0.1, callbacks=(), **kw):
    torch.manual_seed(0)
    run = RunConfig(model=TinyLM().config, name="ckpt-test",
                    data=DataConfig(batch_size=4, seq_len=16),
                    train=TrainConfig(steps=steps, lr=3e-3, warmup_steps=2, log_every=1, callbacks=(),
                                      out_dir=str(tmp_path / "run"), device="cpu", optimizer=optimizer,
                                      deterministic=True, **kw))
    torch.manual_seed(0)
    rec = Recorder()
    trainer = Trainer(TinyLM(dropout=dropout), run, TokenLoader(batch_size=4), callbacks=[rec, *callbacks],
                      tokenizer=FakeTokenizer())
    return trainer, rec


def test_layout_metadata_and_model_card(tmp_path):
    trainer, rec = make(tmp_path, steps=2)
    trainer.fit()
    d = Path(rec.checkpoints[-1])
    assert d.name == "step_00000002" and d.parent == tmp_path / "run" / "checkpoints"
    names = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "rng/rank_00000.json",
            "data/rank_00000.json", "modelcard.json", "metadata.json"} <= names
    assert any(n.startswith("optimizer/") and n.endswith(".safetensors") for n in names)
    weights = load_file(d / "model.safetensors")
    assert set(weights) == set(trainer.module.state_dict())  # plain FQNs, nothing wrapped
    torch.testing.assert_close(weights["head.weight"], trainer.module.head.weight.detach())
    ModelCard.load(d / "modelcard.json").verify(d)  # every file hashed
    md = load_metadata(d / "metadata.json")  # validated against specs.metadata
    assert md["step"] == 2 and md["run"] == "ckpt-test" and md["tokenizer"]["sha256"] == "ab" * 32
    assert md["config"]["train"]["steps"] == 2 and md["model"]["params"] == sum(
        p.numel() for p in trainer.module.parameters())
    assert md["checkpoint"]["files"]["model.safetensors"] == ModelCard.load(d / "modelcard.json").files[
        "model.safetensors"].sha256
    assert md["environment"]["torch"] == torch.__version__ and md["command"]
    state = json.loads((d / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["scheduler"]["last_epoch"] == 2 and state["world_size"] == 1
    assert json.loads((d / "data" / "rank_00000.json").read_text()) == {"index": 2}
    assert not any(p.name.startswith(".") for p in d.parent.iterdir())  # no temporary directories left


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_resume_is_bitwise_identical(tmp_path, optimizer):
    full, rec_full = make(tmp_path / "full", optimizer=optimizer)
    full.fit()
    first, rec_first = make(tmp_path / "split", optimizer=optimizer)
    first.fit(steps=3)  # "interrupted" after step 3 (checkpoint at the end of fit)
    torch.manual_seed(123)  # a different RNG state: the checkpoint must restore it (dropout masks)
    resumed, rec_resumed = make(tmp_path / "split", optimizer=optimizer, resume="auto")
    resumed.fit()
    assert resumed.resumed_from.endswith("step_00000003")
    expected = rec_full.losses()
    got = {**rec_first.losses(), **rec_resumed.losses()}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[s] for s in range(1, 7)] == [expected[s] for s in range(1, 7)]  # bitwise, not approx
    for (k, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), k
    md = load_metadata(Path(rec_resumed.checkpoints[-1]) / "metadata.json")
    assert md["parents"][0]["path"].endswith("step_00000003")


def test_keep_last_and_every_n(tmp_path):
    trainer, rec = make(tmp_path, steps=7, ckpt_every=2, keep_last=2)
    trainer.fit()
    assert [Path(p).name for p in rec.checkpoints] == ["step_00000002", "step_00000004", "step_00000006",
                                                        "step_00000007"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000006", "step_00000007"]


def test_no_final_checkpoint_when_ckpt_final_is_false(tmp_path):
    trainer, rec = make(tmp_path, steps=5, ckpt_every=2, ckpt_final=False)
    trainer.fit()
    assert trainer.global_step == 5
    assert [Path(p).name for p in rec.checkpoints] == ["step_00000002", "step_00000004"]  # none at step 5


def test_failed_save_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    trainer, rec = make(tmp_path, steps=4, ckpt_every=2)
    boom = RuntimeError("disk full")

    def failing(*a, **k):
        raise boom

    trainer.fit(steps=2)
    monkeypatch.setattr(dist, "save_optimizer", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.fit(steps=4)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert ckpt.resolve_resume("auto", tmp_path / "run").name == "step_00000002"


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["weights", "optimizer", "state_missing", "card_missing"])
def test_corrupt_checkpoint_fails_clearly(tmp_path, damage):
    trainer, rec = make(tmp_path, steps=2)
    trainer.fit()
    d = Path(rec.checkpoints[-1])
    if damage == "weights":
        corrupt(d / "model.safetensors")
        match = "model.safetensors.*sha256"
    elif damage == "optimizer":
        victim = next((d / "optimizer").glob("*.safetensors"))
        victim.write_bytes(victim.read_bytes()[:100])
        match = "optimizer.*(truncated|sha256)"
    elif damage == "state_missing":
        (d / "trainer_state.json").unlink()
        match = "does not exist|not a checkpoint"
    else:
        (d / "modelcard.json").unlink()
        match = "incomplete checkpoint, modelcard.json is missing"
    again, _ = make(tmp_path, steps=4)
    with pytest.raises(CheckpointError, match=match):
        again.resume(str(d))


def test_resume_paths(tmp_path):
    trainer, _ = make(tmp_path, steps=2)
    assert trainer.resume("auto") is None and trainer.global_step == 0  # nothing to resume yet: start fresh
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.resume(str(tmp_path / "nowhere"))
    trainer.fit()
    again, _ = make(tmp_path, steps=2)
    assert again.resume(str(tmp_path / "run")).endswith("step_00000002")  # a run directory means its newest
    assert again.global_step == 2


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="train.out_dir.*cannot write"):
        check_writable(str(tmp_path / "file" / "run"))


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    json.dumps(state)  # JSON, no pickle
    a = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
