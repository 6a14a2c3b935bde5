"""``python -m eval.bench SUBCOMMAND ...``: benchmarks that print JSON (and write it with ``--out FILE``).

Each subcommand is a module with ``add_args(parser)`` and ``run(args) -> dict``; :data:`SUBCOMMANDS` maps its name
to those two functions, so adding one is writing them and one line here. Benchmarks are not tests: numbers go to
docs/benchmarks.md with the machine, the date and a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eval.bench import decode, engine, fsdp, generate, server, train_compare, train_step


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


SUBCOMMANDS: dict[str, Subcommand] = {
    "server": Subcommand("latency and throughput of a running OpenAI-compatible server under N concurrent clients",
                         server.add_args, server.run),
    "generate": Subcommand("prefill and decode tokens/s of the decode loop (lmstack.generators) per batch size",
                           generate.add_args, generate.run),
    "train-step": Subcommand("tokens/s of forward + backward + AdamW for a preset", train_step.add_args,
                             train_step.run),
    "decode": Subcommand("GPU decode tokens/s vs the HBM roofline and transformers' static-cache generate",
                         decode.add_args, decode.run),
    "train-compare": Subcommand("training-step tokens/s and MFU vs transformers under torch.compile",
                                train_compare.add_args, train_compare.run),
    "engine": Subcommand("continuous-batching engine tokens/s, TTFT and ITL under N requests vs transformers' batched "
                         "generate", engine.add_args, engine.run),
    "fsdp": Subcommand("data-parallel scaling of torchrun -m train.run: tokens/s per GPU on 1..N GPUs", fsdp.add_args,
                       fsdp.run),
}
