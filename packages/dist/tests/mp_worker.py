"""Run by test_multiprocess.py under ``torchrun --nproc_per_node=2`` (gloo): a plain training loop under each
strategy, and DCP state moving between one process and two ranks. Usage: mp_worker.py OUT_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist
from dist_testing import Net, batches, groups, loss_fn

import dist
from specs.config import DistConfig

ACCUM = 2
CLIP = 0.5  # below the early steps' gradient norms, so clipping scales them


def run_steps(env, net, model, opt, data, norms=None, method=False):
    losses = []
    for rows in data:
        n = rows.shape[0] // env.world_size
        mine = rows[env.rank * n:(env.rank + 1) * n]  # this rank's share of the global batch
        total = torch.zeros(())
        for i, mb in enumerate(mine.chunk(ACCUM)):
            with dist.gradient_sync(model, i == ACCUM - 1):
                loss = (model.loss(mb) if method else loss_fn(model, mb)) / ACCUM
                loss.backward()
            total += loss.detach().float()
        norm = dist.clip_grad_norm_(list(net.parameters()), CLIP)
        if norms is not None:
            norms.append(float(norm))
        with dist.local_shards(opt):  # FSDP: the step on local shards (a no-op for the other strategies)
            opt.step()
        opt.zero_grad()
        tdist.all_reduce(total)
        losses.append(total.item() / env.world_size)
    return losses


def build(cfg, env, seed=0):
    torch.manual_seed(seed)
    net = Net()
    model = dist.apply(net, cfg, env.device)
    opt = dist.build_optimizer(cfg, torch.optim.AdamW, groups(net), lr=1e-2)
    return net, model, opt


def main() -> None:
    out = Path(sys.argv[1])
    env = dist.init(DistConfig(strategy="DDP"), "cpu")
    torch.set_num_threads(1)
    data = batches(4)
    results = {}
    cases = {"DDP": DistConfig(strategy="DDP"), "FSDP": DistConfig(strategy="FSDP"),
             "FSDP_offload": DistConfig(strategy="FSDP", cpu_offload=True, reshard_after_forward=False),
             "FSDP_bf16": DistConfig(strategy="FSDP", precision="bf16"), "ZeRO1": DistConfig(strategy="ZeRO1"),
             "FSDP_units": DistConfig(strategy="FSDP", fsdp_unit_blocks=2),  # blocks 0-1 one unit, block 2 another
             "FSDP_loss_method": DistConfig(strategy="FSDP")}  # the loss by model.loss(...), not model(...)
    for name, cfg in cases.items():
        net, model, opt = build(cfg, env)
        method = name == "FSDP_loss_method"
        results[name] = run_steps(env, net, model, opt, data[:2], norms=results.setdefault(f"{name}_norms", []),
                                  method=method)
        if name in ("FSDP", "ZeRO1"):  # save after 2 steps from 2 ranks, for the single process to continue
            dist.save_model(net, out / name, env)
            rest = dist.save_optimizer(net, opt, out / name, env)
            if env.is_main:
                (out / name / "rest.json").write_text(json.dumps(rest))
        results[name] += run_steps(env, net, model, opt, data[2:], method=method)
        if name == "ZeRO1":
            assert type(opt).__name__ == "ZeroRedundancyOptimizer"
            # each rank keeps optimizer state for its own parameters only
            held = sum(len(s) > 0 for s in opt.optim.state.values())
            results["zero_local_states"] = [held, sum(1 for _ in net.parameters())]
    # one process's state (saved by the test) into two FSDP ranks, then continue
    single = out / "single"
    net, model, opt = build(cases["FSDP"], env, seed=5)
    dist.load_model(net, single)
    dist.load_optimizer(net, opt, single, json.loads((single / "rest.json").read_text()))
    results["FSDP_from_single"] = run_steps(env, net, model, opt, data[2:])
    if env.is_main:
        (out / "result.json").write_text(json.dumps(results))
    dist.destroy()


if __name__ == "__main__":
    main()
