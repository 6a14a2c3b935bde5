"""``bench fsdp``: data-parallel scaling of the user's real training path, ``torchrun -m train.run``, on 1..N GPUs.

For each N of ``--gpus`` (same invocation, run one after another) this launches::

    torchrun --standalone --nproc-per-node=N -m train.run --config <yaml> <overrides>

with the same per-GPU micro-batch (``data.batch_size = micro_batch x N``, ``train.grad_accum = 1``), so weak
scaling: every GPU does the same work per step and only the communication grows. It reads the metrics the Trainer
logs on rank 0 to ``<out_dir>/logs/metrics.jsonl`` (the viz ``jsonl`` backend) every ``--log-every`` steps:
``tokens_per_s`` there is global (the window's ``tokens x world_size`` over rank 0's wall time, synchronised by the
loss all-reduce of a log step), ``mfu`` is per device (divided by the world size), ``mem/max_*_gib`` are rank 0's
CUDA allocator peaks. Windows that start before ``--warmup`` steps (compile, allocator growth) are dropped; the
median of the rest is reported per N with ``tokens_per_s_per_gpu = global / N`` and
``scaling_efficiency = per_gpu(N) / per_gpu(smallest N)`` (torchtitan and the PyTorch FSDP paper, Zhao et al.
2023, report scaling the same way: throughput per device at a fixed per-device batch).

Data: ``--data embedded`` (default) is the embedded corpus (Python standard library text, already on every machine)
under the byte tokenizer, so nothing is downloaded and no tokenizer is trained; the cost of a step depends on the
model's vocabulary, sequence and batch, not on which ids arrive. ``--data config`` keeps the config's own data
section (e.g. real shards). Checkpoints (``train.ckpt_final=false``), evaluation, profiling and callbacks are off.
``--device cpu`` runs gloo processes (``dist.init`` picks NCCL on CUDA ranks, gloo on CPU ones): for tests only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from eval.bench import options
from eval.bench.common import report
from specs.config import RunConfig
from specs.errors import ConfigError, LmstackError
from specs.io import dump_config, load_config
from specs.presets import PRESETS, preset

METRICS_FILE = Path("logs") / "metrics.jsonl"
_STARTED = re.compile(r": ([\d,]+) params, (\d+) rank\(s\) on (\S+), strategy (\S+), precision (\S+)")


class BenchRunError(LmstackError):
    """A torchrun launch of train.run failed or timed out; the message ends with the tail of its output."""


def add_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS), help="model preset (specs.presets)")
    src.add_argument("--config", default=None, help="a RunConfig YAML (e.g. cfgs/llama_1b.yaml): its model, dist and "
                                                    "train settings, overridden by the options below")
    p.add_argument("--gpus", default="1,2", help="comma-separated process counts, each run in turn, e.g. 1,2,4")
    p.add_argument("--strategy", default="FSDP", help="dist.strategy: FSDP (FSDP2), DDP or ZeRO1")
    p.add_argument("--baseline-strategy", default=None,
                   help="dist.strategy of the 1-process run (None: --strategy; 'none': plain one-GPU training)")
    p.add_argument("--seq", type=options.count(1), default=None,
                   help="sequence length (None: the config's data.seq_len, or the preset's max_seq_len)")
    p.add_argument("--micro-batch", type=options.count(1), default=8,
                   help="rows per GPU per optimizer step (no accumulation)")
    p.add_argument("--steps", type=options.count(1), default=30, help="optimizer steps per run")
    p.add_argument("--log-every", type=options.count(1), default=5,
                   help="steps per logged window (train and viz log_every)")
    p.add_argument("--warmup", type=options.count(0), default=10,
                   help="steps whose windows are dropped (compile, warm-up)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"],
                   help="train.precision and dist.precision (FSDP: its mixed-precision policy)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="train.compile: torch.compile each block")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing (None: as the config says)")
    p.add_argument("--data", default="embedded", choices=["embedded", "config"],
                   help="embedded: stdlib text, byte tokenizer, nothing downloaded; config: the config's data section")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu runs gloo processes (tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra train.run override, repeatable, e.g. --set dist.reshard_after_forward=false")
    p.add_argument("--timeout", type=options.seconds, default=900.0, help="seconds allowed for each run")
    p.add_argument("--keep", action="store_true", help="keep the runs' directories (logs, resolved config)")


def parse_gpus(spec: str) -> list[int]:
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    try:
        counts = [int(s) for s in parts]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise ConfigError("--gpus", f"expected comma-separated process counts >= 1 such as 1,2,4, got {spec!r}")
    return sorted(set(counts))


def _check_args(args: argparse.Namespace) -> None:
    """What the options' types cannot see alone (each count's range is checked as it is parsed)."""
    if args.steps < args.warmup + args.log_every:
        raise ConfigError("--steps", f"{args.steps} leaves no logged window after --warmup {args.warmup}; use at "
                                     f"least warmup + log_every = {args.warmup + args.log_every}")
    if importlib.util.find_spec("train") is None:  # a string: eval never imports train
        raise ConfigError("train", "bench fsdp launches `torchrun -m train.run`: pip install lmstack-train")


def _check_devices(device: str, gpus: list[int]) -> None:
    if device != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError("device", "'cuda' was asked for but CUDA is not available on this machine; "
                                    "use --device cpu (gloo) for a functional run")
    if max(gpus) > torch.cuda.device_count():
        raise ConfigError("--gpus", f"{max(gpus)} processes need {max(gpus)} GPUs, but {torch.cuda.device_count()} "
                                    "are visible")


def _overrides(args: argparse.Namespace, seq: int, n: int, out_dir: Path) -> list[str]:
    """train.run's dotted overrides for one run of ``n`` processes (the same for every n except batch and out_dir)."""
    o = {
        "data.seq_len": seq, "data.batch_size": args.micro_batch * n, "data.val_fraction": 0,
        "train.steps": args.steps, "train.grad_accum": 1, "train.log_every": args.log_every,
        "train.eval_every": 0, "train.ckpt_every": 0, "train.ckpt_final": "false", "train.callbacks": "",
        "train.precision": args.precision, "train.compile": str(args.compile).lower(), "train.device": args.device,
        "train.out_dir": out_dir, "dist.strategy": _strategy(args, n), "dist.precision": args.precision,
        "viz.backend": "jsonl", "viz.log_every": args.log_every, "viz.profile_every_n_steps": 0,
        "viz.histogram_every": 0, "viz.probes": "",
    }
    if args.data == "embedded":
        o.update({"data.path": "embedded", "data.tokenizer": "byte"})
    if args.grad_ckpt is not None:
        flag = str(args.grad_ckpt).lower()
        o.update({"dist.grad_ckpt": flag, "train.grad_ckpt": flag})
    argv = [x for k, v in o.items() for x in (f"--{k}", str(v))]
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected SECTION.FIELD=VALUE, got {item!r}")
        argv += [f"--{key.strip()}", value]
    return argv


def _strategy(args: argparse.Namespace, n: int) -> str:
    return args.baseline_strategy if n == 1 and args.baseline_strategy else args.strategy


def _base_config(args: argparse.Namespace, work: Path) -> tuple[Path, str, int]:
    """(config file for train.run, model name, sequence length)."""
    if args.config:
        path = Path(args.config).resolve()
        if not path.is_file():
            raise ConfigError("--config", f"{args.config} is not a file")
        cfg = load_config(path, RunConfig)
        name = cfg.name
    else:
        name = args.preset
        model = preset(name)
        if args.seq is not None and args.seq > model.max_seq_len:
            model = model.replace(max_seq_len=args.seq)
        cfg = RunConfig(model=model, name=f"bench-{name}")
        path = dump_config(cfg, work / "config.yaml")
    seq = args.seq or (cfg.data.seq_len if args.config else cfg.model.max_seq_len)
    if seq > cfg.model.max_seq_len:
        raise ConfigError("--seq", f"{seq} exceeds model.max_seq_len {cfg.model.max_seq_len} of {args.config}")
    return path, name, seq


def _run_env(n: int) -> dict[str, str]:
    env = dict(os.environ)
    # torchrun sets 1 thread per worker only when N > 1; share the cores the same way for every N instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    return env


def _launch(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float, label: str) -> float:
    """Run ``cmd`` with its output in ``log_path``; return its wall seconds or raise BenchRunError."""
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout or Ctrl-C: torchrun forwards SIGTERM to its workers
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise BenchRunError(f"{label} did not finish in {timeout:.0f} s (--timeout){_explain(log_path)}") \
                    from None
            raise
    if rc != 0:
        raise BenchRunError(f"{label} exited with status {rc}{_explain(log_path)}")
    return time.perf_counter() - t0


def _explain(log_path: Path, chars: int = 4000) -> str:
    """The ranks' own ``error:`` lines (train.run's LmstackErrors), then the tail of the run's output."""
    text = log_path.read_text(encoding="utf-8", errors="replace")
    errors = dict.fromkeys(line.strip() for line in text.splitlines() if line.startswith("error: "))
    head = "".join(f"\n{line}" for line in errors)
    return f"{head}\noutput tail:\n{text[-chars:].rstrip()}"


def read_scalars(path: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, values) of every ``scalars`` record of a viz jsonl log, in file order."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a cut-short last line (the writer was killed): ignore, as viz.readers does
            continue
        if rec.get("type") == "scalars":
            rows.append((int(rec["step"]), {k: float(v) for k, v in rec["values"].items()}))
    return rows


def summarize(rows: list[tuple[int, dict[str, float]]], n: int, *, log_every: int, warmup: int) -> dict[str, Any]:
    """Median figures of the steady windows (those starting at step >= ``warmup``) of one run of ``n`` ranks."""
    timed = [(s, v) for s, v in rows if "tokens_per_s" in v]
    steady = [v for s, v in timed if s - log_every >= warmup]
    if not steady:
        raise BenchRunError(f"the run logged no window after step {warmup} (logged steps: {[s for s, _ in timed]})")
    last_step, last = timed[-1]

    def median(key: str) -> float | None:
        vals = [v[key] for v in steady if key in v]
        return statistics.median(vals) if vals else None

    def peak(key: str) -> float | None:
        vals = [v[key] for _, v in rows if key in v]
        return max(vals) if vals else None

    tps = median("tokens_per_s")
    return {
        "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / n, "step_time_s": median("step_time_s"),
        "mfu": median("mfu"), "peak_allocated_gib": peak("mem/max_allocated_gib"),
        "peak_reserved_gib": peak("mem/max_reserved_gib"), "windows": len(steady),
        "tokens_per_s_windows": [v["tokens_per_s"] for v in steady],
        "tokens_per_step": last["tokens_seen"] / last_step, "final_loss": last.get("loss"),
    }


def _one_run(args: argparse.Namespace, config: Path, seq: int, n: int, work: Path) -> dict[str, Any]:
    run_dir = work / f"gpus_{n}"
    run_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "train.run", "--config", str(config), *_overrides(args, seq, n, run_dir)]
    env = _run_env(n)
    wall = _launch(cmd, env, run_dir / "output.log", args.timeout, f"torchrun -m train.run on {n} process(es)")
    log = (run_dir / "output.log").read_text(encoding="utf-8", errors="replace")
    started = _STARTED.search(log)
    if started is None or int(started.group(2)) != n:
        raise BenchRunError(f"train.run did not report {n} rank(s){_explain(run_dir / 'output.log')}")
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise BenchRunError(f"train.run wrote no {METRICS_FILE} under {run_dir}")
    out = {"gpus": n, "params": int(started.group(1).replace(",", "")), "device": started.group(3),
           "strategy": started.group(4), "precision": started.group(5), "global_batch_rows": args.micro_batch * n,
           "expected_tokens_per_step": args.micro_batch * seq * n, "omp_threads": int(env["OMP_NUM_THREADS"]),
           "wall_s": wall, "command": shlex.join(["torchrun", *cmd[3:]])}
    out.update(summarize(read_scalars(metrics), n, log_every=args.log_every, warmup=args.warmup))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    gpus = parse_gpus(args.gpus)
    _check_args(args)
    _check_devices(args.device, gpus)
    work = Path(tempfile.mkdtemp(prefix="lmstack-bench-fsdp-"))
    try:
        config, name, seq = _base_config(args, work)
        # Validate every override here, so a typo fails in a second rather than after torchrun starts N processes.
        for n in {1, max(gpus)}:
            load_config(config, RunConfig, _overrides(args, seq, n, work / "check"))
        runs = []
        for n in gpus:
            r = _one_run(args, config, seq, n, work)
            runs.append(r)
            # A line per finished run on stderr: the figures survive a caller that kills the whole command.
            print(f"bench fsdp: {n} process(es): {r['tokens_per_s']:,.0f} tokens/s, {r['tokens_per_s_per_gpu']:,.0f} "
                  f"per GPU, step {r['step_time_s'] * 1e3:.1f} ms, run {r['wall_s']:.0f} s", file=sys.stderr,
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = runs[0]
    for r in runs:
        r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
    results = {"model": name, "params": base["params"], "strategy": args.strategy, "seq": seq,
               "micro_batch": args.micro_batch, "baseline_gpus": base["gpus"], "runs": runs,
               "work_dir": str(work) if args.keep else None}
    return report("fsdp", vars(args), results, "cuda" if args.device == "cuda" else None)
