"""Run by test_dist.py under ``torchrun --nproc_per_node=2``: the Trainer under DDP, FSDP and ZeRO-1 on gloo.

Usage: trainer_worker.py OUT_DIR SINGLE_CKPT. Writes OUT_DIR/result.json on rank 0 with the per-step losses of each
strategy (every strategy sees the same global batches), and OUT_DIR/<strategy>/checkpoints from 2 ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from train_common import make_trainer
from train_testing import Recorder

import dist
from specs.config import DistConfig


def main() -> None:
    out, single_ckpt = Path(sys.argv[1]), sys.argv[2]
    env = dist.init(DistConfig(strategy="DDP"), "cpu")
    torch.set_num_threads(1)
    result: dict[str, dict[int, float]] = {}
    for strategy in ("DDP", "FSDP", "ZeRO1"):
        rec = Recorder()
        trainer = make_trainer(out / strategy, strategy, env, rec)
        trainer.fit(steps=3)  # a checkpoint at step 3, written by 2 ranks
        trainer.fit()  # continues to step 6
        result[strategy] = rec.losses()
        if strategy == "FSDP":
            assert dist.is_sharded(trainer.model)
    # a checkpoint written by one process, resumed under FSDP on two
    rec = Recorder()
    trainer = make_trainer(out / "resumed_fsdp", "FSDP", env, rec)
    trainer.resume(single_ckpt)
    trainer.fit()
    result["FSDP_from_single"] = rec.losses()
    if env.is_main:
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy()


if __name__ == "__main__":
    main()
