"""The layernorm op's ``lowp_saved`` (kernel/layernorm.py): the reference's values and gradients, its normalised
input saved in the autocast dtype instead of fp32, torch.compile without graph breaks, and the registry keeping the
reference for ``auto`` until a GPU has timed it."""

import pytest
import torch
import torch.nn.functional as F

from kernel import reference, resolve
from kernel.layernorm import layernorm


def _args(D=48, lead=(3, 7), dtype=torch.float32, weight=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, D, generator=g, dtype=dtype) * 3 + 1).requires_grad_()
    w = (1 + 0.5 * torch.randn(D, generator=g, dtype=dtype)).requires_grad_() if weight else None
    b = torch.randn(D, generator=g, dtype=dtype).requires_grad_() if bias else None
    return x, w, b


def _live(args):
    return [a for a in args if a is not None]


@pytest.mark.parametrize("weight, bias", [(True, True), (True, False), (False, False)])
def test_matches_the_reference_and_its_gradients_in_fp32(weight, bias):
    args = _args(weight=weight, bias=bias)
    y, r = layernorm(*args, 1e-5), reference.layernorm(*args, 1e-5)
    assert y.dtype == r.dtype == torch.float32
    torch.testing.assert_close(y, r)
    dy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, _live(args), dy), torch.autograd.grad(r, _live(args), dy)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradcheck_in_float64():
    x, w, b = _args(D=6, lead=(2, 3), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: layernorm(*a, 1e-5), (x, w, b))


def test_only_the_gradients_asked_for_are_computed():
    x, w, b = _args()
    w.requires_grad_(False)
    gx, gb = torch.autograd.grad(layernorm(x, w, b).square().sum(), (x, b))
    rx, rb = torch.autograd.grad(reference.layernorm(x, w, b, 1e-5).square().sum(), (x, b))
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no gradients: the reference itself, nothing saved
        torch.testing.assert_close(layernorm(x, w, b), reference.layernorm(x, w, b, 1e-5))


def _saved(fn):
    """(dtype, shape) of every tensor fn's graph saves for its backward."""
    seen = []

    def pack(t):
        seen.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def test_under_autocast_the_normalised_input_is_saved_in_bf16_and_the_gradients_stay_close():
    """The reference (F.layer_norm) saves x in fp32 for an fp32 residual stream under autocast; lowp_saved saves the
    normalised input in bf16 and one fp32 value a row. Gradients against the fp32 reference: within a few bf16
    units (relative to the largest), where bf16 rounding of x itself would give the same."""
    x, w, b = _args(D=256, lead=(4, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, mine = _saved(lambda: layernorm(x, w, b))
        r, ref = _saved(lambda: F.layer_norm(x, (256,), w, b, 1e-5))
    assert y.dtype == r.dtype == torch.float32  # CPU autocast keeps layer_norm in x's dtype
    torch.testing.assert_close(y, r)  # the same fp32 values: only what is saved differs
    big = [(d, s) for d, s in mine if s == tuple(x.shape)]
    assert big == [(torch.bfloat16, tuple(x.shape))], mine
    assert (torch.float32, tuple(x.shape)) in ref  # the premise: the reference keeps x (or xhat) in fp32
    assert sum(torch.Size(s).numel() * d.itemsize for d, s in mine) < 0.6 * sum(
        torch.Size(s).numel() * d.itemsize for d, s in ref)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), dy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.autograd.grad(F.layer_norm(x, (256,), w, b, 1e-5), (x, w, b), dy)
    eps = torch.finfo(torch.bfloat16).eps
    for name, a, e in zip("xwb", got, want):
        err = (a - e).abs().max().item()
        assert err <= 2 * eps * e.abs().max().item(), (name, err)
    assert not torch.equal(got[1], want[1])  # the weight gradient did use the bf16 xhat


def test_cuda_autocast_returns_fp32_like_f_layer_norm():
    """On CUDA autocast runs layer_norm in fp32 (its fp32 list), on a CPU in x's dtype: the op returns what
    F.layer_norm would, and saves xhat in the autocast dtype (x's own without autocast). On a GPU also checked
    against F.layer_norm itself."""
    from kernel.layernorm import dtypes

    bf16, f32 = torch.bfloat16, torch.float32
    assert dtypes("cuda", f32, bf16) == (f32, bf16) and dtypes("cuda", bf16, bf16) == (f32, bf16)
    assert dtypes("cpu", bf16, bf16) == (bf16, bf16) and dtypes("cpu", f32, bf16) == (f32, bf16)
    assert dtypes("cuda", bf16, None) == (bf16, bf16) and dtypes("cpu", f32, None) == (f32, f32)
    if torch.cuda.is_available():
        x, w, b = (t.detach().cuda().requires_grad_() for t in _args())
        with torch.autocast("cuda", dtype=bf16):
            for xx in (x, x.bfloat16()):
                y, r = layernorm(xx, w, b), F.layer_norm(xx, (48,), w, b, 1e-5)
                assert y.dtype == r.dtype == f32
                torch.testing.assert_close(y, r)


def test_compiles_without_graph_breaks_and_matches_eager():
    args = _args()

    def loss(*a):
        return layernorm(*a, 1e-5).square().mean()

    assert torch._dynamo.explain(loss)(*args).graph_break_count == 0
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(*args), _live(args))
    want = torch.autograd.grad(loss(*args), _live(args))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_compiled_under_autocast_the_graph_saves_bf16_where_the_reference_saves_fp32():
    """What torch.compile's partitioner keeps for the backward of LayerNorm -> bf16 matmul under autocast: for the
    reference an fp32 tensor of x's shape (x itself, with mean and rstd), for lowp_saved only bf16 ones (xhat, and
    the matmul's own input as before)."""
    x, w, b = _args(D=64, lead=(4, 16))
    lin = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    saved = {}
    for name, norm in (("lowp_saved", layernorm), ("reference", reference.layernorm)):
        compiled = torch.compile(lambda *a, norm=norm: (norm(*a[:3], 1e-5) @ a[3].t()).float().square().mean())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, saved[name] = _saved(lambda: compiled(x, w, b, lin))
    shape = tuple(x.shape)
    assert (torch.float32, shape) in saved["reference"], saved["reference"]
    assert [d for d, s in saved["lowp_saved"] if s == shape] == [torch.bfloat16], saved["lowp_saved"]


def test_the_registry_serves_it_by_name_and_keeps_the_reference_for_auto(monkeypatch):
    req = dict(device="cuda", dtype=torch.float32, backward=True, capability=(9, 0))
    assert resolve("layernorm", "lowp_saved", **req) is layernorm
    assert resolve("layernorm", "auto", **req) is reference.layernorm
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert resolve("layernorm", "auto", **req) is reference.layernorm
