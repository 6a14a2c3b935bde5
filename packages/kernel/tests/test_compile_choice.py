"""Under torch.compile, 'auto' picks implementations the compiler can fuse, resolved without graph breaks."""

import pytest
import torch

from kernel import default_registry, resolve
from kernel.reference import linear_cross_entropy, linear_cross_entropy_logits


def test_logits_variant_matches_chunked_reference():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (37,), generator=g)
    y[::5] = -100
    a = linear_cross_entropy(h, w, y)
    ga = torch.autograd.grad(a, (h, w))
    b = linear_cross_entropy_logits(h, w, y)
    gb = torch.autograd.grad(b, (h, w))
    torch.testing.assert_close(a, b)
    for x, z in zip(ga, gb):
        torch.testing.assert_close(x, z)
    assert linear_cross_entropy_logits(h, w, torch.full_like(y, -100)) == 0.0


def test_compiled_region_gets_the_fusable_choice_without_graph_breaks():
    default_registry.cache_clear()
    req = dict(device="cpu", dtype=torch.float32, backward=True)
    eager = resolve("linear_cross_entropy", "auto", **req)
    assert eager is linear_cross_entropy  # eager CPU: the chunked reference (never materialises the logits)
    seen = []

    def loss(h, w, y):
        fn = resolve("linear_cross_entropy", "auto", **req)
        seen.append(fn)
        return fn(h, w, y)

    h, w, y = torch.randn(8, 4), torch.randn(11, 4), torch.randint(0, 11, (8,))
    explain = torch._dynamo.explain(loss)(h, w, y)
    assert explain.graph_break_count == 0
    assert seen[-1] is linear_cross_entropy_logits
    torch.testing.assert_close(torch.compile(loss, backend="eager", fullgraph=True)(h, w, y), eager(h, w, y))


def test_compiled_choice_is_an_order_of_preference(monkeypatch):
    """linear_cross_entropy under compile: the in-place Triton loss where it can run (CUDA with Triton), else the
    materialised logits (a CPU); a one-name preference (as `eval.bench --prefer` sets) still works."""
    pytest.importorskip("triton")  # the Triton implementations need the package, even to be chosen
    from kernel import registry as kreg
    from kernel.triton.linear_ce import linear_cross_entropy_inplace

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    reg = default_registry()
    reg.cache_clear()
    try:
        cuda = dict(device="cuda", dtype=torch.bfloat16, backward=True, capability=(9, 0))
        assert resolve("linear_cross_entropy", "auto", **cuda) is linear_cross_entropy_inplace
        assert resolve("linear_cross_entropy", "auto", device="cpu", dtype=torch.float32,
                       backward=True) is linear_cross_entropy_logits
        monkeypatch.setitem(kreg.COMPILE_PREFERENCE, "linear_cross_entropy", "logits")
        reg.cache_clear()
        assert resolve("linear_cross_entropy", "auto", **cuda) is linear_cross_entropy_logits
    finally:
        reg.cache_clear()
