"""Two gloo processes under torchrun: DDP, FSDP2 (plain, CPU offload, bf16 mixed precision, the loss by a method
of the model rather than its forward) and ZeRO-1 match one process on the same global batch with gradient
accumulation; DCP state moves 1 -> 2 ranks and 2 -> 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from dist_testing import HERE, Net, batches, groups, subprocess_env
from mp_worker import ACCUM, CLIP

import dist

pytestmark = pytest.mark.dist
ONE = dist.DistEnv()


def single_steps(net, opt, data, norms=None):
    """One process, the whole global batch per step, the same accumulation and clipping as the worker (by torch)."""
    losses = []
    for rows in data:
        total = 0.0
        for mb in rows.chunk(ACCUM):
            loss = torch.nn.functional.cross_entropy(net(mb[:, :-1]).flatten(0, 1), mb[:, 1:].flatten()) / ACCUM
            loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(list(net.parameters()), CLIP)  # torch's own, as the reference
        if norms is not None:
            norms.append(float(norm))
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses


def reference(tmp_path):
    """The one-process run; saves its state after 2 of 4 steps."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.AdamW(groups(net), lr=1e-2)
    data = batches(4)
    norms = []
    losses = single_steps(net, opt, data[:2], norms)
    dist.save_model(net, tmp_path / "single", ONE)
    rest = dist.save_optimizer(net, opt, tmp_path / "single", ONE)
    (tmp_path / "single" / "rest.json").write_text(json.dumps(rest))
    return losses + single_steps(net, opt, data[2:]), norms


def test_strategies_and_state_across_world_sizes(tmp_path):
    ref, ref_norms = reference(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "mp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-6000:]
    res = json.loads((tmp_path / "result.json").read_text())
    for name in ("DDP", "FSDP", "FSDP_offload", "ZeRO1", "FSDP_units", "FSDP_loss_method"):
        assert res[name] == pytest.approx(ref, rel=1e-5), name
    # the global norm of sharded grads: local norms reduced
    for name in ("DDP", "FSDP", "FSDP_offload", "ZeRO1", "FSDP_units"):
        assert res[f"{name}_norms"] == pytest.approx(ref_norms, rel=1e-5), name
    assert max(ref_norms) > CLIP  # ... and clipping really scaled the gradients
    assert res["FSDP_bf16"] == pytest.approx(ref, rel=3e-2)  # bf16 compute, fp32 master weights and reduction
    assert res["FSDP_bf16"] != pytest.approx(ref, rel=1e-6)  # ... and it really ran in bf16
    assert res["FSDP_from_single"] == pytest.approx(ref[2:], rel=1e-5)  # 1 process -> 2 ranks
    held, total = res["zero_local_states"]
    assert 0 < held < total  # ZeRO-1: optimizer state is split between the ranks
    # 2 ranks -> 1 process: the FSDP (sharded) and ZeRO-1 (consolidated) states continue the reference run
    assert len(list((tmp_path / "FSDP" / "optimizer").glob("*.safetensors"))) == 2
    for name in ("FSDP", "ZeRO1"):
        d = tmp_path / name
        torch.manual_seed(7)
        net = Net()
        opt = torch.optim.AdamW(groups(net), lr=1e-2)
        dist.load_model(net, d)
        dist.load_optimizer(net, opt, d, json.loads((d / "rest.json").read_text()))
        assert single_steps(net, opt, batches(4)[2:]) == pytest.approx(ref[2:], rel=1e-5), name
