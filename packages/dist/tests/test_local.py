"""In-process tests: block discovery, activation checkpointing, devices, precision checks, clipping, DCP state."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from dist_testing import Net, batches, groups, loss_fn

import dist
from dist.blocks import find_block_list, has_activation_checkpointing
from specs.config import DistConfig
from specs.errors import ConfigError

ONE = dist.DistEnv()


def test_find_blocks_picks_the_repeated_block_list():
    net = Net()
    assert find_block_list(net) is net.layers
    assert dist.find_blocks(torch.nn.Linear(2, 2)) == []


def test_activation_checkpointing_keeps_keys_outputs_and_grads():
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    assert dist.apply_activation_checkpointing(b) == 3 and has_activation_checkpointing(b)
    assert list(a.state_dict()) == list(b.state_dict())
    rows = batches(1)[0]
    la, lb = loss_fn(a, rows), loss_fn(b, rows)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), n
    with pytest.raises(ValueError, match="no nn.ModuleList"):
        dist.apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_apply_without_process_group_and_plain():
    with pytest.raises(ConfigError, match="dist.strategy.*torchrun"):
        dist.apply(Net(), DistConfig(strategy="DDP"), "cpu")
    net = Net()
    out = dist.apply(net, DistConfig(grad_ckpt=True), "cpu", compile=False)
    assert out is net and has_activation_checkpointing(net)
    with pytest.raises(ConfigError, match="dist.grad_ckpt"):
        dist.apply(torch.nn.Linear(2, 2), DistConfig(grad_ckpt=True), "cpu")


def test_devices_and_backends(monkeypatch):
    assert dist.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device.*CUDA is not available"):
        dist.select_device("cuda")
    with pytest.raises(ConfigError, match="train.device.*not a torch device"):
        dist.select_device("gpu0")
    # more ranks on a node than GPUs (torchrun --nproc_per_node 2 on a 1-GPU machine): the error says what to change
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"cuda:1 does not exist \(1 visible GPUs\); it is this process's local "
                                          r"rank: run no more processes a node than it has GPUs .*train.device to cpu"):
        dist.select_device("auto", local_rank=1)
    with pytest.raises(ConfigError, match=r"cuda:3 does not exist \(1 visible GPUs\)$"):
        dist.select_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = dist.init(DistConfig(), "cpu")  # no torchrun, no strategy: one process, no group
    assert env == dist.DistEnv() and not env.initialized and env.is_main
    assert dist.any_rank(env, True) and not dist.any_rank(env, False)
    assert dist.broadcast_json(env, {"a": [1]}) == {"a": [1]}
    with pytest.raises(ConfigError, match="dist.backend.*nccl"):
        dist.env._backend(DistConfig(backend="nccl"), torch.device("cpu"))


def test_precision_checks(monkeypatch):
    assert dist.check_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert dist.check_precision("fp16", torch.device("cpu")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ConfigError, match=r"dist.precision: bf16 needs .* Tesla V100-SXM2-16GB is 7.0"):
        dist.check_precision("bf16", torch.device("cuda", 0), "dist.precision")
    assert dist.why_unsupported("fp16", torch.device("cuda", 0)) is None
    with pytest.raises(ConfigError, match="unknown precision"):
        dist.dtype_of("fp8")


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    rows = batches(1)[0]
    loss_fn(a, rows).backward()
    loss_fn(b, rows).backward()
    got = dist.clip_grad_norm_(list(a.parameters()), 0.5)
    want = torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.5)
    torch.testing.assert_close(got, want)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert float(dist.grad_total_norm(a.parameters())) == pytest.approx(0.5, rel=1e-4)


def test_eager_warmup_compiles_nothing_and_changes_nothing():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    class Dropped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.drop = torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.lin(x)).relu()

    torch.manual_seed(0)
    torch._dynamo.reset()
    net = Dropped()
    net.compile(backend=backend)
    x = torch.randn(3, 4)
    before = [p.detach().clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    dist.eager_warmup(net, x)
    assert graphs == []  # ran eagerly
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's draws came from a forked stream
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    net(x)
    assert len(graphs) == 1  # the compiled call after it traces as before


def _assert_same_state(sa, sb):
    from torch.distributed.tensor import DTensor

    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys(), i
        for k, v in sa[i].items():
            w = sb[i][k]
            assert type(v) is type(w), (i, k)  # moments stay DTensors sharded like their parameter
            if isinstance(v, DTensor):
                assert v.placements == w.placements and torch.equal(v.full_tensor(), w.full_tensor()), (i, k)
            else:
                assert torch.equal(v, w), (i, k)


@pytest.mark.parametrize("make_opt", [
    lambda g: torch.optim.AdamW(g, lr=1e-2, fused=True), lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=True),
    lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9)], ids=["adamw_fused", "adamw_foreach", "sgd_momentum"])
def test_local_shards_step_equals_the_dtensor_step(tmp_path, make_opt):
    from torch.distributed.tensor import DTensor

    dist.init(DistConfig(strategy="FSDP"), "cpu")  # one rank, in process
    try:
        runs = []
        for local in (False, True):
            torch.manual_seed(0)
            net = Net()
            dist.apply(net, DistConfig(strategy="FSDP"), "cpu")
            opt = make_opt(groups(net))
            for rows in batches(3):
                loss_fn(net, rows).backward()
                with dist.local_shards(opt) if local else contextlib.nullcontext():
                    opt.step()
                opt.zero_grad()
            runs.append((net, opt))
        (a, opt_a), (b, opt_b) = runs
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert isinstance(q, DTensor) and torch.equal(p.full_tensor(), q.full_tensor()), n
        sb = opt_b.state_dict()["state"]
        _assert_same_state(opt_a.state_dict()["state"], sb)
        assert len(sb) == len(list(a.parameters()))
        rest = dist.save_optimizer(b, opt_b, tmp_path, ONE)  # DCP round trip of the state the local steps wrote
        fresh = make_opt(groups(b))
        dist.load_optimizer(b, fresh, tmp_path, rest)
        _assert_same_state(fresh.state_dict()["state"], sb)
    finally:
        dist.destroy()


def test_gradient_sync_is_a_no_op_for_plain_modules():
    net = Net()
    with dist.gradient_sync(net, False):
        pass
    opt = dist.build_optimizer(DistConfig(), torch.optim.AdamW, groups(net), lr=1e-3)
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 2


def train_steps(model, opt, rows_list):
    out = []
    for rows in rows_list:
        loss = loss_fn(model, rows)
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(loss.item())
    return out


def test_state_round_trip_continues_exactly(tmp_path):
    data = batches(6)
    torch.manual_seed(0)
    ref = Net()
    ref_opt = torch.optim.AdamW(groups(ref), lr=1e-2)
    ref_losses = train_steps(ref, ref_opt, data)

    torch.manual_seed(0)
    a = Net()
    dist.apply_activation_checkpointing(a)  # wrapped modules still save plain names
    opt = torch.optim.AdamW(groups(a), lr=1e-2)
    train_steps(a, opt, data[:3])
    path = dist.save_model(a, tmp_path, ONE)
    rest = dist.save_optimizer(a, opt, tmp_path, ONE)
    assert path.name == "model.safetensors" and not (tmp_path / ".model-dcp").exists()
    assert rest["param_groups.layers.0.up.weight.lr"] == 1e-2
    assert not list(tmp_path.rglob(".metadata"))  # no pickled DCP metadata anywhere

    torch.manual_seed(1)
    b = Net()
    opt_b = torch.optim.AdamW(groups(b), lr=1e-2)
    dist.load_model(b, tmp_path)
    dist.load_optimizer(b, opt_b, tmp_path, rest)
    assert train_steps(b, opt_b, data[3:]) == ref_losses[3:]


def test_state_errors(tmp_path):
    net = Net()
    with pytest.raises(dist.CheckpointError, match="no \\*.safetensors"):
        dist.load_model(net, tmp_path)
    dist.save_model(net, tmp_path, ONE)
    with pytest.raises(dist.CheckpointError, match="cannot load model weights"):
        dist.load_model(Net(n_layers=4), tmp_path)  # a block the checkpoint does not have
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(dist.CheckpointError, match="not a readable safetensors file"):
        dist.load_model(net, tmp_path)


def test_tied_weights_are_stored_once(tmp_path):
    from safetensors.torch import load_file

    def tied():
        net = Net()
        net.head = torch.nn.Linear(16, 32, bias=False)
        net.head.weight = net.emb.weight  # (32, 16) shared, as in GPT-2
        return net

    torch.manual_seed(0)
    a = tied()
    assert dist.state.tied_aliases(a) == {"head.weight": "emb.weight"}
    dist.save_model(a, tmp_path, ONE)
    assert "head.weight" not in load_file(tmp_path / "model.safetensors")  # one copy, as HF checkpoints hold
    torch.manual_seed(1)
    b = tied()
    dist.load_model(b, tmp_path)
    assert torch.equal(b.emb.weight, a.emb.weight) and b.head.weight is b.emb.weight


def test_integer_and_0d_tensors_round_trip(tmp_path):
    """What DCP's consolidation mishandles (integer dtypes it cannot size, 0-d tensors it writes as zeros) is
    written apart, exactly, and read back checked."""
    from safetensors.torch import load_file

    def net(seed):
        torch.manual_seed(seed)
        n = Net()
        n.temperature = torch.nn.Parameter(torch.rand(()) + 0.5)
        n.register_buffer("packed", torch.randint(0, 256, (40,), dtype=torch.uint8))
        n.register_buffer("shape", torch.tensor([7, 3]))
        n.register_buffer("offset", torch.rand(()))
        return n

    a, b = net(0), net(1)
    dist.save_model(a, tmp_path, ONE)
    saved = load_file(tmp_path / "model.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(saved[k], v), k
    dist.load_model(b, tmp_path)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    half = net(3).to(torch.float64)  # a 0-d float loads cast, as DCP's loader casts the others
    dist.load_model(half, tmp_path)
    assert half.temperature.dtype == torch.float64 and float(half.temperature) == float(a.temperature)
    c = net(2)
    c.packed = torch.zeros(41, dtype=torch.uint8)
    with pytest.raises(dist.CheckpointError, match=r"'packed' is torch.uint8 \(40,\), the model's torch.uint8 \(41,\)"):
        dist.load_model(c, tmp_path)


@pytest.mark.parametrize("shards", [True, False])
def test_fsdp_shards_frozen_integer_parameters_or_names_the_torch_it_needs(monkeypatch, shards):
    """A frozen uint8 parameter (QLoRA's 4-bit bytes) is sharded, not cast by the mixed-precision policy, and
    gathered whole for forward; a torch whose FSDP cannot (before 2.12) is a ConfigError naming the parameter."""
    from dist import strategies

    monkeypatch.setattr(strategies, "fsdp_shards_integers", lambda: shards)
    dist.init(DistConfig(strategy="FSDP"), "cpu")  # one rank, in process
    try:
        net = Net(n_layers=2)
        packed = torch.randint(0, 256, (33,), dtype=torch.uint8)
        net.layers[0].packed = torch.nn.Parameter(packed.clone(), requires_grad=False)
        if not shards:
            with pytest.raises(ConfigError, match=r"'layers.0.packed'.*torch 2.12.*use DDP"):
                dist.apply(net, DistConfig(strategy="FSDP"), "cpu", precision="bf16")
            return
        dist.apply(net, DistConfig(strategy="FSDP"), "cpu", precision="bf16")
        assert hasattr(net.layers[0].packed, "to_local") and net.layers[0].packed.dtype == torch.uint8
        seen = []  # (a hook registered after FSDP's runs after its all-gather)
        net.layers[0].register_forward_pre_hook(lambda m, args: seen.append(m.packed.detach().clone()))
        loss_fn(net, batches(1)[0]).backward()
        assert not hasattr(seen[0], "to_local")  # the whole tensor, gathered
        assert len(seen) == 1 and seen[0].dtype == torch.uint8 and torch.equal(seen[0], packed)
    finally:
        dist.destroy()


def test_auto_unit_size_holds_about_30m_parameters_per_unit():
    from torch import nn

    from dist.strategies import FSDP_UNIT_PARAMS, unit_blocks

    def blocks(n, width):  # (on the meta device: only their sizes count, and 22 blocks of 8192^2 are 6 GB)
        return [nn.Linear(width, width, bias=False, device="meta") for _ in range(n)]

    small, big = blocks(12, 768 * 3), blocks(22, 8192)  # ~5.3M and ~67M parameters per block
    assert unit_blocks(small, "auto") == FSDP_UNIT_PARAMS // (768 * 3) ** 2 == 5
    assert unit_blocks(big, "auto") == 1
    assert unit_blocks(blocks(3, 16), "auto") == 3  # never more than all of them
    assert unit_blocks(small, 2) == 2 and unit_blocks([], "auto") == 1
    assert DistConfig().fsdp_unit_blocks == "auto"
    assert DistConfig(fsdp_unit_blocks=4).fsdp_unit_blocks == 4
    with pytest.raises(ConfigError, match="fsdp_unit_blocks"):
        DistConfig(fsdp_unit_blocks=0)
    with pytest.raises(ConfigError, match="fsdp_unit_blocks"):
        DistConfig(fsdp_unit_blocks="many")


@pytest.mark.parametrize("unit", [1, 2, 3, 5, "auto"])
def test_fsdp_units_group_consecutive_blocks(unit):
    """dist.fsdp_unit_blocks: N consecutive blocks share one FSDP parameter group (one all-gather and one set of
    hooks per step), the rest of the model stays with the root."""
    from torch.distributed.fsdp import fully_shard

    dist.init(DistConfig(strategy="FSDP"), "cpu")  # one rank, in process
    try:
        net = Net(n_layers=3)
        dist.apply(net, DistConfig(strategy="FSDP", fsdp_unit_blocks=unit), "cpu")
        groups_of = [fully_shard.state(b)._fsdp_param_group for b in net.layers]
        distinct = []
        for g in groups_of:
            if not any(g is d for d in distinct):
                distinct.append(g)
        n = 3 if unit == "auto" else unit  # auto: the test net's blocks are tiny, so one unit holds all three
        assert len(distinct) == -(-3 // n)
        per_block = len(list(net.layers[0].parameters()))
        assert all(len(g.fsdp_params) == per_block * min(n, 3) or g is distinct[-1] for g in distinct)
        assert sum(len(g.fsdp_params) for g in distinct) == 3 * per_block
        loss_fn(net, batches(1)[0]).backward()  # and it trains
        assert all(p.grad is not None for p in net.parameters())
    finally:
        dist.destroy()
