"""``train.init_from``: a run that starts from a saved model's weights (fine-tuning), through ``python -m
train.run`` and the Trainer, from an lmstack checkpoint and from a Hugging Face directory (checked against
transformers), with its lineage and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from test_run import DEBUG, FAST, losses

from model.lm import TransformerLM
from specs.config import TrainConfig
from specs.errors import ConfigError
from specs.io import load_config
from specs.modelcard import sha256_file
from train.run import cli
from train.trainer import Trainer

QUIET = [*FAST, "--train.ckpt_every", "0"]


def _finetune_yaml(path: Path, init_from: Path, **sections) -> str:
    doc = {"name": "finetune", "data": {"path": "embedded", "seq_len": 32, "batch_size": 4, "val_fraction": 0.0},
           "train": {"steps": 2, "init_from": str(init_from), "warmup_steps": 1, "log_every": 1, "eval_every": 0,
                     "callbacks": []},
           "viz": {"backend": ["csv"], "log_every": 1}}
    for name, fields in sections.items():
        doc.setdefault(name, {}).update(fields)
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_run_starts_from_a_checkpoint_and_records_it(tmp_path):
    """A finetune config with no model section and no tokenizer takes both from the checkpoint; the run starts at
    the checkpoint's loss (not an untrained model's), a learning rate of ~0 leaves its weights as they were, and
    every checkpoint's metadata lists the directory (with the sha256 of its weights) among its parents."""
    base = tmp_path / "base"
    assert cli(["--config", DEBUG, *QUIET, "--train.steps", "12", "--train.out_dir", str(base)]) == 0
    ckpt = base / "checkpoints" / "step_00000012"
    scratch = losses(base)[1]
    cfg = _finetune_yaml(tmp_path / "ft.yaml", ckpt, model={"dropout": 0.0, "attn_impl": "reference"},
                         train={"lr": 1e-12, "weight_decay": 0.0})
    out = tmp_path / "ft"
    assert cli(["--config", cfg, "--train.out_dir", str(out)]) == 0
    resolved = load_config(out / "config.yaml")
    assert resolved.model.network_mismatches(load_config(DEBUG).model) == []
    assert resolved.model.attn_impl == "reference" and resolved.data.tokenizer == str(ckpt)
    assert max(losses(out).values()) < scratch - 0.5, (losses(out), losses(base))  # the checkpoint's loss
    last = out / "checkpoints" / "step_00000002"
    tuned, start = TransformerLM.from_pretrained(last), TransformerLM.from_pretrained(ckpt)
    for k, v in _weights(start).items():
        torch.testing.assert_close(_weights(tuned)[k], v, rtol=0, atol=1e-6)
    md = json.loads((last / "metadata.json").read_text())
    assert {"kind": "model", "path": str(ckpt), "sha256": sha256_file(ckpt / "model.safetensors")} in md["parents"]
    assert md["tokenizer"]["spec"] == str(ckpt)


def test_a_hugging_face_directory_trains_from_its_weights(tmp_path):
    """From a transformers LlamaForCausalLM directory (no model section given): the model is the directory's, and
    after a step at a learning rate of ~0 the run's checkpoint gives transformers' logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      initializer_range=0.2, tie_word_embeddings=False)).eval()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    cfg = _finetune_yaml(tmp_path / "ft.yaml", src, data={"tokenizer": "byte"},
                         train={"lr": 1e-12, "weight_decay": 0.0, "steps": 1})
    out = tmp_path / "ft"
    assert cli(["--config", cfg, "--train.out_dir", str(out)]) == 0
    tuned = TransformerLM.from_pretrained(out / "checkpoints" / "step_00000001").eval()
    assert tuned.config.d_ff == 172 and tuned.config.kv_heads == 2 and tuned.config.vocab_size == 320
    ids = torch.randint(0, 320, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_the_trainer_loads_init_from_into_a_notebooks_model(tmp_path):
    """Trainer(model, TrainConfig(init_from=DIR)) copies the directory's weights into the model it is given."""
    torch.manual_seed(1)
    saved = TransformerLM(load_config(DEBUG).model)
    saved.save_pretrained(tmp_path / "m")
    torch.manual_seed(2)
    model = TransformerLM(load_config(DEBUG).model)
    assert not torch.equal(model.lm_head.weight, saved.lm_head.weight)
    Trainer(model, TrainConfig(init_from=str(tmp_path / "m"), out_dir=str(tmp_path / "run"), device="cpu"))
    for k, v in _weights(saved).items():
        assert torch.equal(_weights(model)[k], v), k


def test_init_from_errors_stop_before_any_work(tmp_path, capsys):
    """A missing directory, one without config.json, and a model section describing another network are exit 2
    with the field named, before the output directory is made; fields a run may change (dropout) are taken."""
    TransformerLM(load_config(DEBUG).model).save_pretrained(tmp_path / "m")
    out = tmp_path / "never"
    run = ["--config", DEBUG, *QUIET, "--train.out_dir", str(out), "--train.init_from"]
    assert cli([*run, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "train.init_from" in err and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert cli([*run, str(tmp_path / "empty")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert cli([*run, str(tmp_path / "m"), "--model.d_ff", "100", "--model.n_layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "model.n_layers is 3 here, 2 there" in err and "model.d_ff is 100 here, 172 there" in err, err
    assert not out.exists()
    with pytest.raises(ConfigError, match="model.d_ff is 100 here"):  # from_pretrained(config=) checks the same
        TransformerLM.from_pretrained(tmp_path / "m", config=replace(load_config(DEBUG).model, d_ff=100))
    loose = TransformerLM.from_pretrained(tmp_path / "m", config=replace(load_config(DEBUG).model, dropout=0.1))
    assert loose.config.dropout == 0.1


def test_a_v1_config_is_migrated_before_the_directory_fills_it(tmp_path):
    """A schema v1 document (ffn_dim, max_steps) with init_from: migrated first, then completed from the
    directory, so its v1 names do not collide with the directory's v2 ones."""
    TransformerLM(load_config(DEBUG).model).save_pretrained(tmp_path / "m")
    doc = {"schema_version": 1, "name": "v1", "model": {"ffn_dim": 172, "dropout": 0.1},
           "data": {"path": "embedded", "seq_len": 32, "batch_size": 4, "tokenizer": "byte", "val_fraction": 0.0},
           "train": {"max_steps": 1, "init_from": str(tmp_path / "m"), "callbacks": [], "eval_every": 0},
           "viz": {"backend": ["csv"]}}
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(doc))
    assert cli(["--config", str(tmp_path / "v1.yaml"), "--train.out_dir", str(tmp_path / "out")]) == 0
    resolved = load_config(tmp_path / "out" / "config.yaml")
    assert resolved.model.d_ff == 172 and resolved.model.dropout == 0.1 and resolved.train.steps == 1
