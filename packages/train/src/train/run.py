"""``torchrun -m train.run --config cfgs/llm_small.yaml [--section.field VALUE ...]``: one training run from YAML.

Any number of processes: ``python -m train.run --config cfgs/debug.yaml`` is one process; under torchrun each
rank reads the torchrun environment (``dist.init``), e.g. the seed's::

    torchrun --nproc_per_node=8 -m train.run --config cfgs/llm_small.yaml \\
      --dist.strategy FSDP --dist.precision bf16 --dist.grad_ckpt true \\
      --viz.backend csv --viz.profile_every_n_steps 500

Several nodes: ``torchrun --nnodes N --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500
--rdzv-id RUN -m train.run ...`` on every node. Every config field is overridable (``--train.steps 10
--train.out_dir runs/x``); ``--resume auto|PATH`` continues a run; ``--train.init_from DIR`` starts from a saved
model's weights (an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory: fine-tuning), the
model section and data.tokenizer defaulting to the directory's (:mod:`train.init_from`). Model, data and
tokenizer come from plugins (``lmstack.models`` by ``model.arch``, ``lmstack.datasets`` by ``data.dataset``,
``lmstack.tokenizers``).
Config errors stop before any work (exit code 2); SIGTERM/Ctrl-C save a checkpoint, then exit 128 + signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import dist
from specs.cli import run_cli
from specs.config import RunConfig
from specs.io import config_from_dict, dump_config, read_document
from specs.migrations import migrate
from specs.plugins import resolve
from specs.schema import parse_override_args
from train import init_from
from train.errors import TrainingInterrupted
from train.inputs import build_data, build_tokenizer, preflight
from train.trainer import Trainer
from viz.session import VizSession

logger = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.run", description=__doc__.split("\n\n")[0],
        epilog="Overrides: any --<section>.<field> VALUE of the RunConfig (sections: model, data, train, dist, viz, "
               "export, eval, serve), e.g. --train.steps 10 --dist.strategy FSDP --viz.backend csv,jsonl.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML or JSON RunConfig (see cfgs/)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from the newest checkpoint of train.out_dir (auto) "
                                                         "or from a checkpoint/run directory (same as --train.resume)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every rank builds identical initial weights (FSDP shards them in place)


def _command(argv: Sequence[str]) -> list[str]:
    launcher = ["torchrun"] if dist.env.launched_by_torchrun() else ["python"]
    return [*launcher, "-m", "train.run", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = build_parser().parse_known_args(argv)
    if args.resume:
        overrides += ["--train.resume", args.resume]
    pairs = parse_override_args(overrides)
    # fine-tuning: what the config leaves out of the model section (and data.tokenizer) from train.init_from's dir
    doc = init_from.fill_from_directory(migrate("RunConfig", read_document(args.config)), pairs)
    cfg = config_from_dict(doc, RunConfig, pairs)
    if args.print_config:
        from specs.io import dumps_config

        sys.stdout.write(dumps_config(cfg))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede the first cuBLAS call
    env = dist.init(cfg.dist, cfg.train.device)
    try:
        code = _train(cfg, env, argv)
        if code == 0:
            # every rank past its last collective before any tears the group down (torch's shutdown advice: a
            # 2-process gloo run once aborted at exit, "terminate called without an active exception"); not after
            # a failure, where the other ranks may never arrive
            dist.barrier(env)
        return code
    finally:
        dist.destroy()


def _train(cfg: RunConfig, env: dist.DistEnv, argv: Sequence[str]) -> int:
    preflight(cfg, env)
    seed_everything(cfg.train.seed)
    train_dl, eval_dl, manifest_dir = build_data(cfg, env)
    tokenizer = build_tokenizer(cfg, train_dl)
    model = resolve("lmstack.models", cfg.model.arch)(cfg.model)  # the Trainer loads train.init_from's weights
    viz = VizSession(cfg.viz, run_dir=cfg.viz.log_dir or str(Path(cfg.train.out_dir) / "logs"), config=cfg.to_dict(),
                     rank=env.rank)
    try:
        trainer = Trainer(model, cfg, train_dl, callbacks=[viz], eval_dataloader=eval_dl, tokenizer=tokenizer,
                          env=env, manifest_dir=manifest_dir, command=_command(argv))
        if cfg.train.resume is not None:
            trainer.resume(cfg.train.resume)
        if env.is_main:
            dump_config(cfg, Path(cfg.train.out_dir) / "config.yaml")
            logger.info("%s: %s params, %d rank(s) on %s, strategy %s, precision %s", cfg.name,
                        f"{sum(p.numel() for p in model.parameters()):,}", env.world_size, env.device,
                        cfg.dist.strategy, trainer.precision)
        viz.watch(trainer.module, next_step=trainer.global_step + 1)
        try:
            metrics = trainer.fit()
        except TrainingInterrupted as stop:
            if env.is_main:
                logger.warning("%s", stop)
            return 128 + stop.signum
        if env.is_main:
            loss = metrics.get("loss")  # absent unless the last step was a log step (train.log_every)
            logger.info("done: step %d%s, checkpoints in %s", trainer.global_step,
                        "" if loss is None else f", loss {loss:.4f}", Path(cfg.train.out_dir) / "checkpoints")
        return 0
    finally:
        viz.close()


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
