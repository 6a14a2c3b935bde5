"""KernelRegistry: selection, declared capabilities, logged fallbacks, errors listing names, entry points."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest
import torch

from kernel import OPS, Implementation, KernelRegistry, Request, default_registry, make_request, resolve
from kernel import reference as ref
from kernel.builtin import builtin_implementations
from specs.errors import PluginError


def test_every_op_has_a_reference_and_auto_on_cpu_never_picks_a_gpu_kernel():
    reg = default_registry()
    for op in OPS:
        assert "reference" in reg.names(op)
        chosen = reg.select(op, "auto", device="cpu", dtype=torch.float32)
        assert chosen.devices is None or "cpu" in chosen.devices
    assert resolve("rmsnorm", "reference") is ref.rmsnorm
    assert resolve("attention", "auto", device="cpu").__module__ == "kernel.sdpa"


def test_unknown_names_list_valid_ones():
    with pytest.raises(PluginError, match=r"did you mean 'flash'.*valid names: auto, flash, .*reference, sdpa"):
        resolve("attention", "flsh")  # (installed plugins' names may sit between)
    with pytest.raises(PluginError, match=r"unknown kernel op 'atention'.*valid ops: attention, rmsnorm"):
        resolve("atention")
    from specs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"named by strings .*got op='attention', impl=None"):
        resolve("attention", None)
    with pytest.raises(ConfigError, match=r"kernel.head_dim: expected None or an integer >= 1, got '64'"):
        resolve("attention", head_dim="64")


def test_flash_refuses_with_reason_and_falls_back_to_sdpa_logging_once(caplog):
    reg = KernelRegistry(builtin_implementations())
    reason = reg.why_not("attention", "flash", device="cuda", dtype=torch.bfloat16, head_dim=128, causal=True)
    assert reason is not None and "flash_attn" in reason and "not installed" in reason
    with caplog.at_level(logging.WARNING, logger="kernel"):
        for _ in range(3):
            chosen = reg.select("attention", "flash", device="cpu", dtype=torch.bfloat16, causal=True)
    assert chosen.name == "sdpa"
    msgs = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert len(msgs) == 1 and "'flash' cannot serve" in msgs[0] and "using 'sdpa'" in msgs[0]


def test_auto_logs_its_choice_once_per_key(caplog):
    reg = KernelRegistry(builtin_implementations())
    with caplog.at_level(logging.INFO, logger="kernel"):
        for _ in range(3):
            reg.resolve("attention", "auto", device="cpu", dtype=torch.float32, head_dim=64)
        reg.resolve("attention", "auto", device="cpu", dtype=torch.float32, head_dim=128)
    chose = [r.getMessage() for r in caplog.records if "auto chose" in r.getMessage()]
    assert len(chose) == 2 and "'sdpa'" in chose[0] and "head_dim=64" in chose[0]


def _fake(name="fast", **kw) -> Implementation:
    return Implementation(op="attention", name=name, target=ref.attention, **kw)


def test_why_not_reads_every_declaration():
    cuda_bf16 = dict(op="attention", device="cuda", dtype=torch.bfloat16, head_dim=128, capability=(9, 0))
    cases = [
        (_fake(devices=("cuda",)), Request(op="attention", device="cpu"), "runs on cuda only"),
        (_fake(dtypes=(torch.bfloat16,)), Request(op="attention", dtype=torch.float32), "not float32"),
        (_fake(max_head_dim=64), Request(**cuda_bf16), "head_dim <= 64"),
        (_fake(head_dims=(64, 128)), Request(op="attention", head_dim=96), "head_dim in (64, 128)"),
        (_fake(head_dim_multiple=16), Request(op="attention", head_dim=72), "divisible by 16"),
        (_fake(causal=False), Request(op="attention", causal=True), "causal"),
        (_fake(gqa=False), Request(op="attention", gqa=True), "grouped-query"),
        (_fake(mask=False), Request(op="attention", mask=True), "boolean masks"),
        (_fake(bias=False), Request(op="attention", bias=True), "bias"),
        (_fake(backward=False), Request(op="attention", backward=True), "backward"),
        (_fake(window=False), Request(op="attention", window=128), "sliding-window"),
        (_fake(min_capability=(9, 0)), Request(**{**cuda_bf16, "capability": (8, 6)}), ">= 9.0, the device has 8.6"),
        (_fake(requires=("surely_not_a_module_xyz",)), Request(op="attention"), "not installed"),
        (_fake(), Request(op="rmsnorm"), "implements 'attention'"),
    ]
    for impl, req, words in cases:
        reason = impl.why_not(req)
        assert reason is not None and words in reason, (impl, req, reason)
    assert _fake(devices=("cuda",), min_capability=(8, 0), max_head_dim=128).why_not(Request(**cuda_bf16)) is None


def test_auto_prefers_priority_and_skips_refusing_impls():
    reg = KernelRegistry(builtin_implementations())
    reg.register(_fake("gpu_only", priority=100, devices=("cuda",)))
    reg.register(_fake("no_mask", priority=90, mask=False))
    assert reg.select("attention", device="cpu").name == "no_mask"
    assert reg.select("attention", device="cpu", mask=True).name == "sdpa"
    assert reg.select("attention", device="cuda", capability=(9, 0)).name == "gpu_only"


def test_registration_rules_and_cache_invalidation():
    reg = KernelRegistry(builtin_implementations())
    assert reg.select("swiglu").name == "reference"
    reg.register(Implementation(op="swiglu", name="fast", target=ref.swiglu, priority=5))
    assert reg.select("swiglu").name == "fast"  # the cached choice was dropped on register
    with pytest.raises(PluginError, match="already registered"):
        reg.register(Implementation(op="swiglu", name="fast", target=ref.rmsnorm, priority=5))
    with pytest.raises(PluginError, match="reserved"):
        reg.register(Implementation(op="swiglu", name="auto", target=ref.swiglu))
    with pytest.raises(PluginError, match="unknown op 'conv'"):
        Implementation(op="conv", name="x", target=ref.swiglu)
    broken = Implementation(op="swiglu", name="broken", target="kernel.no_such_module:fn")
    with pytest.raises(PluginError, match="failed to load"):
        broken.load()


def test_no_implementation_can_serve_raises_with_every_reason():
    reg = KernelRegistry([_fake("only", devices=("cuda",), fallback=None)])
    with pytest.raises(PluginError, match="only: runs on cuda only"):
        reg.select("attention", device="cpu")
    with pytest.raises(PluginError, match="'only' cannot serve"):
        reg.select("attention", "only", device="cpu")


def _ep(name, value):
    return EntryPoint(name=name, value=value, group="lmstack.kernels")


def test_entry_points_load_idempotently():
    import fake_plugin

    reg = KernelRegistry(builtin_implementations())
    eps = [_ep("many", "fake_plugin:implementations"), _ep("one", "fake_plugin:single")]
    before = len(fake_plugin.LOADS)
    assert reg.load_entry_points(eps=eps) == ["many", "one"]
    assert reg.load_entry_points(eps=eps) == []  # second call: nothing new, nothing reloaded
    assert len(fake_plugin.LOADS) == before + 1
    assert reg.select("swiglu", device="cpu").name == "plugin"
    assert reg.select("swiglu", device="cuda").name != "plugin"  # the plugin declared cpu only
    g, u = torch.randn(3), torch.randn(3)
    assert torch.allclose(reg.resolve("swiglu", "plugin")(g, u), 2 * ref.swiglu(g, u))
    assert "plugin" in reg.names("rmsnorm")


def test_broken_entry_point_names_itself():
    reg = KernelRegistry()
    with pytest.raises(PluginError, match=r"entry point 'bad' \(fake_plugin:not_an_impl\)"):
        reg.load_entry_points(eps=[_ep("bad", "fake_plugin:not_an_impl")])
    with pytest.raises(PluginError, match="'gone'"):
        reg.load_entry_points(eps=[_ep("gone", "no_such_pkg_xyz:impls")])


def test_default_registry_is_a_resettable_cached_factory():
    a = default_registry()
    assert default_registry() is a
    default_registry.cache_clear()
    assert default_registry() is not a


def test_make_request_normalises_device():
    assert make_request("attention", device=torch.device("cpu")).device == "cpu"
    assert make_request("attention", device="cuda:1", capability=(8, 0)).device == "cuda"
    r1 = make_request("attention", device="cpu", dtype=torch.bfloat16, head_dim=64)
    assert r1 == make_request("attention", device="cpu", dtype=torch.bfloat16, head_dim=64) and hash(r1)


def test_kernel_works_without_triton_or_flash_attn_installed():
    """In a fresh interpreter where triton and flash_attn cannot be imported, everything but them still works."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None; sys.modules["flash_attn"] = None  # as if not installed
import torch, kernel
reg = kernel.default_registry()
req = dict(device="cuda", dtype=torch.bfloat16, head_dim=64, capability=(9, 0))
assert reg.select("attention", "auto", **req).name == "sdpa"
assert reg.select("rmsnorm", "auto", **req).name == "reference"
assert "'triton' package, which is not installed" in reg.why_not("rmsnorm", "triton", **req)
assert reg.select("attention", "triton", **req).name == "reference"
q = torch.randn(1, 2, 3, 8)
assert kernel.resolve("attention", "flash")(q, q, q, causal=True).shape == q.shape
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_resolve_traces_under_torch_compile_fullgraph():
    w = torch.ones(16)

    def f(x):
        norm = resolve("rmsnorm", "auto", device=x.device, dtype=x.dtype)
        attn = resolve("attention", "auto", device=x.device, dtype=x.dtype, causal=True)
        q = x.view(1, 1, 4, 16)
        return norm(x, w, 1e-5) + attn(q, q, q, causal=True).view(4, 16)

    x = torch.randn(4, 16)
    expect = f(x)  # resolve eagerly first; afterwards the lookup is a traced constant
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), expect)
