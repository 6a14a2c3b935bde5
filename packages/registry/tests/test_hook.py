"""The ``registry`` trainer callback: inert without its environment, and a real Trainer's checkpoints as versions."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from conftest import checkpoint

from registry import Registry, RegistryCallback
from specs.plugins import resolve


def test_entry_point_builds_with_no_arguments_and_is_inert_without_env(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("LMSTACK_REGISTRY", raising=False)
    monkeypatch.setenv("LMSTACK_REGISTRY_MODEL", "m")
    cls = resolve("lmstack.callbacks", "registry")
    assert cls is RegistryCallback
    cb = cls()  # how train.callbacks instantiates a class plugin
    caplog.set_level(logging.INFO, logger="registry")
    for step in (1, 2):
        cb.on_checkpoint(SimpleNamespace(global_step=step), str(checkpoint(tmp_path / f"c{step}", seed=step)))
    inactive = [r for r in caplog.records if "inactive" in r.getMessage()]
    assert len(inactive) == 1 and "LMSTACK_REGISTRY unset" in inactive[0].getMessage()
    assert not any(tmp_path.glob("**/index.db"))


def test_checkpoints_become_versions_with_eval_metadata_and_lineage(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTACK_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("LMSTACK_REGISTRY_MODEL", "run1")
    cb = RegistryCallback()
    trainer = SimpleNamespace(global_step=10)
    cb.on_eval(trainer, 10, {"loss": 2.5, "ppl": 12.2})
    cb.on_checkpoint(trainer, str(checkpoint(tmp_path / "step10", seed=1)))
    trainer.global_step = 20
    cb.on_eval(trainer, 20, {"loss": 2.0, "ppl": 7.4})
    cb.on_checkpoint(trainer, str(checkpoint(tmp_path / "step20", seed=2)))
    with Registry(tmp_path / "reg") as reg:
        v1, v2 = reg.list_versions("run1")
        assert (v1.metadata["step"], v1.metadata["eval"]["ppl"], v1.parent, v1.creator) == (10, 12.2, None, "train")
        assert (v2.metadata["step"], v2.parent, v2.tags) == (20, 1, ("checkpoint",))
        assert reg.promote("run1", 2, "production", reason="best ppl", require_metadata={"eval.ppl": {"max": 8}})
    assert cb.registered == [1, 2]


def test_a_real_trainer_registers_its_checkpoints(tmp_path, monkeypatch):
    import torch

    from model.lm import TransformerLM
    from specs.batch import Batch
    from specs.config import DataConfig, RunConfig, TrainConfig
    from specs.presets import preset
    from train import Trainer

    monkeypatch.setenv("LMSTACK_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("LMSTACK_REGISTRY_MODEL", "tiny")
    torch.manual_seed(0)
    cfg = preset("llama-debug")
    run = RunConfig(model=cfg, data=DataConfig(batch_size=2, seq_len=8),
                    train=TrainConfig(steps=2, ckpt_every=1, warmup_steps=0, log_every=1, device="cpu",
                                      out_dir=str(tmp_path / "run"), callbacks=("registry",)))
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    batches = iter([Batch(input_ids=ids[:, :-1], labels=ids[:, 1:])] * 4)
    trainer = Trainer(TransformerLM(cfg), run, batches)
    trainer.fit()
    with Registry(tmp_path / "reg") as reg:
        versions = reg.list_versions("tiny")
        assert [v.metadata["step"] for v in versions] == [1, 2] and versions[1].parent == 1
        names = {f.path for f in versions[-1].files}
        assert {"model.safetensors", "config.json", "modelcard.json"} <= names
        out = reg.checkout("tiny", "latest", tmp_path / "restored")
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert names == {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}  # the whole checkpoint
    loaded = TransformerLM.from_pretrained(out)  # its model card's hashes verified
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trainer.model.state_dict().values()))
