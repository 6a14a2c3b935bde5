"""Host (CPU-side) time of one Trainer step, split into phases, beside a bare training loop on the same model.

Plain script::

    python packages/train/benchmarks/bench_step_overhead.py [--steps 40] [--precision bf16] [--compile]
                                                            [--strategies bare,none,FSDP] [--profile]
                                                            [--host-top N]
    python packages/train/benchmarks/bench_step_overhead.py --device cuda --full --compile   # on a GPU

The model has GPT-2 124M's *structure* (``specs.presets`` ``gpt2-124m``: 12 blocks, tied embeddings, learned
positions, biases, 196 parameter tensors) with tiny widths (d_model 16, vocab 128, 2 x 16 tokens), so the arithmetic
is negligible and what is left is Python, autograd and dispatch: the time a GPU step spends on the host, which the
GPU cannot hide once it exceeds the kernels' own time. Compared on this model:

- ``bare``: ``model.loss`` under autocast (``--compile``: all of it under one ``torch.compile``), ``backward``,
  the Trainer's own optimizer (``train.optim``), ``zero_grad``;
- ``none``: ``Trainer.step(batch, sync=False)``, strategy none (the plain path of ``train.run``; ``--compile``:
  the whole model as one graph, as ``dist.apply`` does without a wrapper);
- ``FSDP``: the same under FSDP2 on a one-rank gloo group (``dist.init`` without torchrun).

Phases are timed by wrapping the callables the Trainer calls (forward: ``_forward_backward`` less
``Tensor.backward``, so FSDP's hooks and the loss weighting count as forward; ``dist.clip_grad_norm_``,
``optimizer.step``, ``optimizer.zero_grad``, ``scheduler.step``); ``other`` is the rest of the step (batch
transfer, NaN bookkeeping, metrics, callbacks). Medians over ``--steps`` steps after ``--warmup``. ``aten_ops`` is
the number of leaf aten ops per step (from ``torch.profiler``, views excluded): each is roughly one kernel launch on
a GPU. Prints one JSON object.

``--device cuda --full`` runs the real GPT-2 124M widths (16 x 1024 tokens by default) on a GPU: the phases are then
the host's time (kernels are launched, not waited for), and ``gpu_synced_step`` the step until its kernels finish
(a synchronize after each step): a step is host-bound when its host total is close to ``gpu_synced_step``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

import dist
from kernel.registry import default_registry
from specs.batch import Batch
from specs.config import DataConfig, DistConfig, RunConfig, TrainConfig
from specs.presets import preset
from train import Trainer
from train.optim import build_optimizer

TINY = dict(d_model=16, n_heads=2, d_ff=64, vocab_size=128)  # GPT-2 124M's structure, negligible arithmetic
PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad", "scheduler")
VIEW_OPS = ("aten::view", "aten::as_strided", "aten::_reshape_alias", "aten::t", "aten::transpose", "aten::expand",
            "aten::detach", "aten::alias", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
            "aten::permute", "aten::_unsafe_view", "aten::split", "aten::unbind", "aten::reshape", "aten::empty",
            "aten::lift_fresh", "aten::_local_scalar_dense", "aten::item", "aten::resolve_conj", "aten::resolve_neg")


def model_config(args: argparse.Namespace) -> Any:
    return preset("gpt2-124m", max_seq_len=args.seq, **({} if args.full else TINY))


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    from model.lm import TransformerLM  # lmstack-model: a test extra of lmstack-train

    torch.manual_seed(0)
    return TransformerLM(model_config(args))


def make_batch(args: argparse.Namespace) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model_config(args).vocab_size, (args.rows, args.seq + 1), generator=g)
    return Batch(input_ids=ids[:, :-1].contiguous(), labels=ids[:, 1:].contiguous()).to(torch.device(args.device))


class PhaseTimer:
    """Accumulates wall time per phase within one step; ``wrap`` times a callable, ``span`` a block."""

    def __init__(self) -> None:
        self.now: dict[str, float] = defaultdict(float)
        self.history: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.now[name] += time.perf_counter() - t0
        return timed

    def hook_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """Time ``opt.step`` through its hooks (replacing the method would hide it from the lr scheduler)."""
        start: list[float] = []
        opt.register_step_pre_hook(lambda *_: start.append(time.perf_counter()))

        def post(*_: Any) -> None:
            self.now["optimizer"] += time.perf_counter() - start.pop()
        opt.register_step_post_hook(post)

    def end_step(self, total: float) -> None:
        self.now["forward"] -= self.now.get("backward", 0.0)  # wrapped around both (see run_trainer)
        for name in PHASES:
            self.history[name].append(self.now.get(name, 0.0))
        self.history["other"].append(total - sum(self.now.values()))
        self.history["total"].append(total)
        self.now.clear()

    def medians_ms(self, skip: int) -> dict[str, float]:
        return {k: round(1e3 * statistics.median(v[skip:]), 3) for k, v in self.history.items()}


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def leaf_aten_ops(step: Callable[[], Any], steps: int = 3) -> float:
    """Leaf aten ops per step, views and allocations excluded (about one kernel launch each on a GPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.events()
    n = sum(1 for e in events if e.name.startswith("aten::") and e.name not in VIEW_OPS
            and not any(c.name.startswith("aten::") for c in e.cpu_children))
    return n / steps


def host_profile(step: Callable[[], Any], top: int, cuda: bool, steps: int = 3) -> list[dict[str, Any]]:
    """The ``top`` host-side functions by self time per step (torch.profiler; with CUDA, the runtime calls too, so
    a synchronisation, e.g. ``cudaStreamSynchronize`` or ``cudaEventSynchronize``, shows up by name and time)."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"name": e.key[:100], "self_host_ms": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "calls": round(e.count / steps, 1)} for e in rows]


def run_bare(args: argparse.Namespace, timer: PhaseTimer) -> Callable[[], Any]:
    device = torch.device(args.device)
    model = make_model(args).to(device)
    opt = build_optimizer(model, TrainConfig(device=args.device), device)
    b = make_batch(args)
    dtype = dist.dtype_of(args.precision)
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if args.precision != "fp32" else contextlib.nullcontext
    # --compile: the whole loss function in one graph, as `python -m eval.bench train-compare` does, after one
    # eager call that resolves the model's kernels (a first resolution while tracing is a graph break).
    if args.compile:
        with amp():
            model.loss(b.input_ids, b.labels)
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    timer.hook_optimizer(opt)
    zero_grad = timer.wrap("zero_grad", opt.zero_grad)

    def forward_backward() -> None:
        with amp():
            loss = loss_fn(b.input_ids, b.labels)
        loss.backward()
    forward_backward = timer.wrap("forward", forward_backward)  # less backward, as for the Trainer

    def step() -> None:
        forward_backward()
        opt.step()
        zero_grad(set_to_none=True)
    return step


def run_trainer(args: argparse.Namespace, strategy: str, timer: PhaseTimer, out: str) -> Callable[[], Any]:
    precision = args.precision
    run = RunConfig(model=model_config(args), name=f"overhead-{strategy}",
                    data=DataConfig(batch_size=args.rows, seq_len=args.seq),
                    train=TrainConfig(steps=10_000, log_every=args.log_every, callbacks=(), device=args.device,
                                      precision=precision, compile=args.compile, out_dir=out, warmup_steps=10),
                    dist=DistConfig(strategy=strategy, precision=precision,
                                    reshard_after_forward=args.reshard_after_forward,
                                    fsdp_unit_blocks=args.fsdp_unit_blocks))
    trainer = Trainer(make_model(args), run, env=dist.current(args.device))
    # Forward is timed as _forward_backward less backward: a hook on the model would run inside a whole-model
    # compile (strategy none), where timing calls break the graph.
    trainer._forward_backward = timer.wrap("forward", trainer._forward_backward)
    timer.hook_optimizer(trainer.optimizer)
    trainer.optimizer.zero_grad = timer.wrap("zero_grad", trainer.optimizer.zero_grad)
    trainer.scheduler.step = timer.wrap("scheduler", trainer.scheduler.step)
    b = make_batch(args)
    return lambda: trainer.step(b, sync=False)


def measure(args: argparse.Namespace, name: str, build: Callable[[PhaseTimer], Callable[[], Any]]) -> dict[str, Any]:
    torch._dynamo.reset()  # each strategy compiles from scratch and resolves its kernels afresh, as a new process
    default_registry.cache_clear()
    timer = PhaseTimer()
    step = build(timer)
    cuda = args.device.startswith("cuda")
    synced: list[float] = []
    backward = timer.wrap("backward", torch.Tensor.backward)
    clip = timer.wrap("clip", dist.clip_grad_norm_)
    with patched(torch.Tensor, "backward", backward), patched(dist, "clip_grad_norm_", clip):
        for _ in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            step()
            host = time.perf_counter() - t0
            if cuda:  # the GPU's share: the step ends when its kernels do (the next step starts on an idle GPU)
                torch.cuda.synchronize()
                synced.append(time.perf_counter() - t0)
            timer.end_step(host)
        ops = leaf_aten_ops(step) if args.profile else None
        hot = host_profile(step, args.host_top, cuda) if args.host_top else None
    res: dict[str, Any] = {"ms": timer.medians_ms(args.warmup)}
    if hot is not None:
        res["host_top"] = hot
        for r in hot:
            print(f"       {r['self_host_ms']:8.3f} ms {r['calls']:7.1f}x  {r['name']}")
    if cuda:
        res["ms"]["gpu_synced_step"] = round(1e3 * statistics.median(synced[args.warmup:]), 3)
    if ops is not None:
        res["aten_ops"] = round(ops, 1)
    print(f"{name:>5}: " + " | ".join(f"{k} {v:.2f}" for k, v in res["ms"].items())
          + (f" | aten ops {ops:.0f}" if ops is not None else ""), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="bare,none,FSDP", help="comma-separated: bare, none, FSDP")
    p.add_argument("--steps", type=int, default=40, help="timed steps per strategy")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, lazy init)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="train.compile (none: the whole model; FSDP: each block)")
    p.add_argument("--reshard-after-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="dist.reshard_after_forward (FSDP)")
    p.add_argument("--fsdp-unit-blocks", type=int, default=1,
                   help="dist.fsdp_unit_blocks (FSDP): consecutive blocks sharded as one unit")
    p.add_argument("--log-every", type=int, default=10, help="train.log_every (a log step reads the loss)")
    p.add_argument("--profile", action="store_true", help="also count leaf aten ops per step (torch.profiler)")
    p.add_argument("--host-top", type=int, default=0, metavar="N",
                   help="also list the N host functions with the most self time per step (torch.profiler)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the host time beside the synced GPU step")
    p.add_argument("--full", action="store_true", help="GPT-2 124M's real widths (for a GPU; default: tiny widths)")
    p.add_argument("--rows", type=int, default=None, help="batch rows (default 2, or 16 with --full)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 16, or 1024 with --full)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args()
    args.rows = args.rows or (16 if args.full else 2)
    args.seq = args.seq or (1024 if args.full else 16)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"benchmark": "train.step_overhead", "precision": args.precision,
                               "compile": args.compile, "device": args.device, "full_widths": args.full,
                               "batch": [args.rows, args.seq], "steps": args.steps,
                               "machine": platform.machine(), "python": platform.python_version(),
                               "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]}
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            if name == "bare":
                results[name] = measure(args, name, lambda t: run_bare(args, t))
            elif name == "none":
                results[name] = measure(args, name, lambda t: run_trainer(args, "none", t, out))
            elif name == "FSDP":
                dist.init(DistConfig(strategy="FSDP"), args.device)  # a one-rank group (gloo/NCCL), no torchrun
                try:
                    results[name] = measure(args, name, lambda t: run_trainer(args, "FSDP", t, out))
                finally:
                    dist.destroy()
            else:
                raise SystemExit(f"unknown strategy {name!r}; expected bare, none or FSDP")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
