"""The one training setup the distributed tests share between the test process and the torchrun workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from train_testing import TokenLoader

import dist
from specs.config import DataConfig, DistConfig, RunConfig, TrainConfig
from specs.presets import preset
from train import Trainer
from train.inputs import RankSlice

GLOBAL_BATCH = 8


def make_trainer(out: Path, strategy: str, env: dist.DistEnv, *callbacks: Any) -> Trainer:
    """The real TransformerLM (llama-debug) on the same global batches for any world size and strategy."""
    from model.lm import TransformerLM

    mcfg = preset("llama-debug", vocab_size=64, max_seq_len=32)
    run = RunConfig(model=mcfg, name=f"dist-{strategy}", data=DataConfig(batch_size=GLOBAL_BATCH, seq_len=16),
                    train=TrainConfig(steps=6, lr=1e-2, warmup_steps=1, log_every=1, callbacks=(), grad_accum=2,
                                      out_dir=str(out), device="cpu", deterministic=True),
                    dist=DistConfig(strategy=strategy))
    torch.manual_seed(0)
    model = TransformerLM(mcfg)
    data = RankSlice(TokenLoader(batch_size=GLOBAL_BATCH, vocab=64), env.rank, env.world_size)
    return Trainer(model, run, data, callbacks=callbacks, env=env)
