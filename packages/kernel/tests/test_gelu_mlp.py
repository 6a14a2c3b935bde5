"""The gelu_mlp op: GPT-2's MLP with the GELU in cuBLASLt matmul epilogues (kernel/gelu_mlp.py, kernel/cublaslt.py).

On a CPU the autograd function runs its custom ops' torch path, so what is checked here everywhere is the wiring:
forward, every gradient, the None biases, autocast, and torch.compile (no graph break). On CUDA the epilogues
themselves are checked against the torch reference in fp32 (the relative-tolerance rule of STYLE.md)."""

import pytest
import torch
import torch.nn.functional as F

from kernel import default_registry, reference, resolve
from kernel.gelu_mlp import gelu_linear, gelu_mlp, gelu_mlp_bgrad, linear_dgelu, wgrad_bgrad
from specs.errors import ShapeError

CUDA = torch.cuda.is_available()
BOTH = pytest.mark.parametrize("fn", [gelu_mlp, gelu_mlp_bgrad], ids=["cublaslt", "cublaslt_bgrad"])


def _args(D=16, Fh=32, Do=16, lead=(3, 5), dtype=torch.float32, bias=True, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype, device=device) * scale).requires_grad_()

    return (r(*lead, D), r(Fh, D, scale=D ** -0.5), r(Fh) if bias else None, r(Do, Fh, scale=Fh ** -0.5),
            r(Do) if bias else None)


@BOTH
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_reference_forward_and_every_gradient(fn, bias):
    args = _args(bias=bias)
    y, r = fn(*args), reference.gelu_mlp(*args)
    torch.testing.assert_close(y, r)
    dy = torch.randn_like(y)
    live = [a for a in args if a is not None]
    for a, b in zip(torch.autograd.grad(y, live, dy), torch.autograd.grad(r, live, dy)):
        torch.testing.assert_close(a, b)


def test_inference_is_the_plain_composition(monkeypatch):
    """Without gradients the epilogue's pre-activation would be written for nothing: no autograd function runs."""
    import kernel.gelu_mlp as gm

    def refuse(*a):
        raise AssertionError("the training path ran without gradients")

    monkeypatch.setattr(gm._GeluMLP, "apply", refuse)
    args = _args()
    with torch.no_grad():
        torch.testing.assert_close(gelu_mlp(*args), reference.gelu_mlp(*args))
    frozen = [None if a is None else a.detach() for a in args]
    torch.testing.assert_close(gelu_mlp(*frozen), reference.gelu_mlp(*frozen))
    with pytest.raises(AssertionError, match="training path"):
        gelu_mlp(*args)


@BOTH
def test_gradcheck_in_float64(fn):
    args = _args(D=8, Fh=16, Do=8, lead=(2, 3), dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, args)


@BOTH
def test_only_the_gradients_asked_for_are_computed(fn):
    x, w1, b1, w2, b2 = _args()
    w1.requires_grad_(False)
    b2.requires_grad_(False)
    y = fn(x, w1, b1, w2, b2)
    gx, gb1, gw2 = torch.autograd.grad(y.sum(), (x, b1, w2))
    rx, rb1, rw2 = torch.autograd.grad(reference.gelu_mlp(x, w1, b1, w2, b2).sum(), (x, b1, w2))
    for a, b in ((gx, rx), (gb1, rb1), (gw2, rw2)):
        torch.testing.assert_close(a, b)


def test_matmul_dtype_follows_autocast_on_the_tensors_device_only():
    from kernel.reference import matmul_dtype

    x = torch.randn(2, 4)
    assert matmul_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_dtype(x) == torch.bfloat16
    with torch.autocast("cuda", dtype=torch.float16, enabled=True) if CUDA else torch.autocast("cpu", enabled=False):
        assert matmul_dtype(x) == torch.float32  # autocast elsewhere (or off) leaves a CPU tensor's dtype


def test_autocast_computes_in_the_autocast_dtype_like_f_linear():
    args = _args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, r = gelu_mlp(*args), reference.gelu_mlp(*args)
    assert y.dtype == r.dtype == torch.bfloat16
    torch.testing.assert_close(y, r, atol=2e-2, rtol=2e-2)
    gy = torch.autograd.grad(y.float().sum(), args[1])[0]
    gr = torch.autograd.grad(r.float().sum(), args[1])[0]
    assert gy.dtype == torch.float32  # the fp32 weight's gradient, through the cast
    torch.testing.assert_close(gy, gr, atol=5e-2, rtol=5e-2)


@BOTH
def test_compiles_without_graph_breaks_and_matches_eager(fn):
    args = _args(bias=True)

    def loss(*a):
        return fn(*a).square().mean()

    assert torch._dynamo.explain(loss)(*args).graph_break_count == 0
    compiled = torch.compile(loss, fullgraph=True)
    live = [a for a in args if a is not None]
    got = torch.autograd.grad(compiled(*args), live)
    want = torch.autograd.grad(loss(*args), live)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_registry_keeps_the_reference_on_a_cpu_and_says_why():
    req = dict(device="cpu", dtype=torch.bfloat16, backward=True)
    assert resolve("gelu_mlp", "auto", **req) is reference.gelu_mlp
    why = default_registry().why_not("gelu_mlp", "cublaslt", **req)
    assert why is not None and "cuda" in why


def test_compiled_auto_picks_the_epilogues_on_cuda_and_the_reference_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    cuda = dict(device="cuda", dtype=torch.bfloat16, backward=True, capability=(9, 0))
    assert resolve("gelu_mlp", "auto", **cuda) is gelu_mlp  # not cublaslt_bgrad: a by-name choice until timed
    assert resolve("gelu_mlp", "cublaslt_bgrad", **cuda) is gelu_mlp_bgrad
    assert resolve("gelu_mlp", "auto", device="cpu", dtype=torch.bfloat16, backward=True) is reference.gelu_mlp
    # before sm80 the implementation refuses, so the preference moves on to the reference
    assert resolve("gelu_mlp", "auto", **{**cuda, "capability": (7, 5)}) is reference.gelu_mlp


def test_cublaslt_matmuls_refuse_operands_they_cannot_take_before_touching_cuda():
    from kernel import cublaslt

    x, w = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(32, 16, dtype=torch.bfloat16)
    with pytest.raises(ShapeError, match=r"gelu_linear: needs contiguous CUDA fp16/bf16 .* got x \(4, 16\)"):
        cublaslt.gelu_linear(x, w, None)  # a CPU tensor
    with pytest.raises(ShapeError, match=r"linear_dgelu: .* pre \(4, 8\)"):
        cublaslt.linear_dgelu(torch.randn(4, 32, dtype=torch.bfloat16), w, torch.randn(4, 8, dtype=torch.bfloat16))
    # the custom ops take them all, through torch
    act, pre = gelu_linear(x.float(), w.float(), None)
    torch.testing.assert_close(act, F.gelu(x.float() @ w.float().t(), approximate="tanh"))


@pytest.mark.skipif(not CUDA, reason="the cuBLASLt epilogues need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("algo", ["first", "timed"])
def test_cublaslt_epilogues_against_fp32(dtype, bias, algo, monkeypatch):
    from kernel import cublaslt as lt

    monkeypatch.setenv(lt.ALGO_ENV, algo)  # the heuristic's first algorithm, or the fastest of its first few
    monkeypatch.setattr(lt, "_plans", {})
    N, D, Fh = 333, 256, 1024  # N not a multiple of any tile
    x, w1, b1, w2, _ = (a.detach() if a is not None else None
                        for a in _args(D=D, Fh=Fh, Do=D, lead=(N,), dtype=torch.float32, bias=bias, device="cuda"))
    lo = [None if t is None else t.to(dtype) for t in (x, w1, b1, w2)]
    act, pre = gelu_linear(lo[0], lo[1], lo[2])
    pre32 = F.linear(x, w1, b1)
    ref_pre, ref_act = pre32, F.gelu(pre32, approximate="tanh")
    torch_pre = F.linear(lo[0], lo[1], lo[2])  # the torch low-precision path, for the tolerance
    torch_act = F.gelu(torch_pre, approximate="tanh")
    for got, low, ref in ((pre, torch_pre, ref_pre), (act, torch_act, ref_act)):
        err, base = (got.float() - ref).abs().max(), (low.float() - ref).abs().max()
        assert err <= 2 * base + 1e-3, (err, base)
    dy = torch.randn(N, D, device="cuda")
    ref_dh = torch.ops.aten.gelu_backward(dy @ w2, pre.float(), approximate="tanh")
    low_dh = torch.ops.aten.gelu_backward(dy.to(dtype) @ lo[3], pre, approximate="tanh")
    dh = linear_dgelu(dy.to(dtype), lo[3], pre)
    err, base = (dh.float() - ref_dh).abs().max(), (low_dh.float() - ref_dh).abs().max()
    assert err <= 2 * base + 1e-3, (err, base)
    assert len(lt._plans) == 2
    for plan in lt._plans.values():  # timed: each of the heuristic's algorithms ran (or was refused), one kept
        assert (plan.times_ms is None) == (algo == "first" or len(plan.algos) == 1), plan.times_ms
        assert plan.algo is not None and (algo == "timed" or len(plan.algos) == 1)


@pytest.mark.skipif(not CUDA, reason="the cuBLASLt epilogues need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cublaslt_wgrad_bgrad_against_fp32(dtype):
    N, K, M = 333, 256, 1024
    g = torch.Generator(device="cuda").manual_seed(1)
    x, dy = (torch.randn(N, K, device="cuda", generator=g), torch.randn(N, M, device="cuda", generator=g))
    dw, db = wgrad_bgrad(x.to(dtype), dy.to(dtype))
    ref_w, ref_b = dy.t() @ x, dy.sum(0)
    low_w, low_b = dy.to(dtype).t() @ x.to(dtype), dy.to(dtype).sum(0)
    for got, low, ref in ((dw, low_w, ref_w), (db, low_b, ref_b)):
        err, base = (got.float() - ref).abs().max(), (low.float() - ref).abs().max()
        assert err <= 2 * base + 1e-2, (err, base)


@pytest.mark.skipif(not CUDA, reason="the cuBLASLt epilogues need a CUDA device")
def test_cublaslt_mlp_trains_like_the_reference_under_autocast_and_compile():
    args = _args(D=768, Fh=3072, Do=768, lead=(4, 256), device="cuda")
    impl = resolve("gelu_mlp", "auto", device="cuda", dtype=torch.bfloat16, backward=True)
    assert impl is gelu_mlp
    live = [a for a in args if a is not None]
    grads = {}
    for name, fn in (("ref", reference.gelu_mlp), ("lt", gelu_mlp), ("lt_compiled", torch.compile(gelu_mlp)),
                     ("bgrad_compiled", torch.compile(gelu_mlp_bgrad))):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(*args)
        grads[name] = (y.float(), *torch.autograd.grad(y.float().square().mean(), live))
    for name in ("lt", "lt_compiled", "bgrad_compiled"):
        for a, b in zip(grads[name], grads["ref"]):
            torch.testing.assert_close(a, b, atol=3e-2 * b.abs().max().item(), rtol=3e-2)


@pytest.mark.skipif(not CUDA, reason="the cuBLASLt epilogues need a CUDA device")
def test_cublaslt_refuses_shapes_it_cannot_take():
    from kernel import cublaslt

    x = torch.randn(4, 12, device="cuda", dtype=torch.bfloat16)  # K = 12: not a multiple of 8
    w = torch.randn(16, 12, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ShapeError, match="multiples of 8"):
        cublaslt.gelu_linear(x, w, None)
    act, pre = gelu_linear(x, w, None)  # the op falls back to torch for them
    torch.testing.assert_close(pre, F.linear(x, w))


class _FakeLt:
    """Stands in for libcublasLt: records descriptors, attributes, layouts and launches (the ctypes plumbing of
    kernel.cublaslt checked without a GPU; the numbers themselves are checked on CUDA above)."""

    def __init__(self, algos: int = 1):
        self.next_id, self.attrs, self.layouts, self.launches, self.destroyed = 100, {}, {}, [], []
        self.algos, self.requested = algos, []

    def _new(self, ref):
        self.next_id += 1
        ref._obj.value = self.next_id
        return self.next_id

    def cublasLtCreate(self, ref):
        self._new(ref)
        return 0

    def cublasLtMatmulDescCreate(self, ref, compute, scale):
        self.attrs[self._new(ref)] = {"compute": compute, "scale": scale}
        return 0

    def cublasLtMatmulDescSetAttribute(self, desc, attr, ref, size):
        self.attrs[desc.value][attr] = ref._obj.value
        return 0

    def cublasLtMatrixLayoutCreate(self, ref, dtype, rows, cols, ld):
        self.layouts[self._new(ref)] = (dtype, rows, cols, ld)
        return 0

    def cublasLtMatmulPreferenceCreate(self, ref):
        self._new(ref)
        return 0

    def cublasLtMatmulPreferenceSetAttribute(self, *a):
        return 0

    def cublasLtMatmulPreferenceDestroy(self, pref):
        return 0

    def cublasLtMatmulAlgoGetHeuristic(self, handle, desc, a, b, c, d, pref, requested, result, count):
        self.requested.append(requested)
        count._obj.value = min(requested, self.algos)
        for i in range(count._obj.value):  # algorithms 1, 2, ...: the heuristic's order
            result[i].algo[0] = i + 1
        return 0

    def cublasLtMatmul(self, handle, desc, alpha, a, adesc, b, bdesc, beta, c, cdesc, d, ddesc, algo, ws, ws_size, st):
        self.launches.append(dict(attrs=dict(self.attrs[desc.value]), a=(a.value, self.layouts[adesc.value]),
                                  b=(b.value, self.layouts[bdesc.value]), d=(d.value, self.layouts[ddesc.value]),
                                  algo=algo._obj[0]))
        return 0

    def cublasLtMatmulDescDestroy(self, desc):
        self.destroyed.append(desc.value)

    def cublasLtMatrixLayoutDestroy(self, lay):
        self.destroyed.append(lay.value)


def _fake_library(monkeypatch, algos: int = 1) -> _FakeLt:
    """kernel.cublaslt wired to a stand-in library, CPU tensors standing in for CUDA ones."""
    import contextlib
    import types

    from kernel import cublaslt as lt

    fake = _FakeLt(algos)
    monkeypatch.setattr(lt, "_state", {"lib": fake})
    monkeypatch.setattr(lt, "_plans", {})
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(lt, "_on_cuda", lambda t: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return fake


def test_cublaslt_issues_each_product_column_major_with_its_epilogue(monkeypatch):
    from kernel import cublaslt as lt

    monkeypatch.delenv(lt.ALGO_ENV, raising=False)
    fake = _fake_library(monkeypatch)
    N, K, M = 24, 16, 32
    bf = dict(dtype=torch.bfloat16)
    x, w1, b1 = torch.empty(N, K, **bf), torch.empty(M, K, **bf), torch.empty(M, **bf)
    # gelu_linear: out.T (M, N) = w1 (stored (K, M) column-major, transposed) @ x.T (K, N)
    out, pre = lt.gelu_linear(x, w1, b1)
    assert out.shape == pre.shape == (N, M)
    (call,) = fake.launches
    assert call["a"] == (w1.data_ptr(), (14, K, M, K)) and call["b"] == (x.data_ptr(), (14, K, N, K))
    assert call["d"] == (out.data_ptr(), (14, M, N, M))
    attrs = call["attrs"]
    assert attrs[lt._DESC_EPILOGUE] == 164 and attrs[lt._DESC_TRANSA] == 1 and attrs[lt._DESC_AUX_LD] == M
    assert attrs[lt._DESC_BIAS_POINTER] == b1.data_ptr() and attrs[lt._DESC_AUX_POINTER] == pre.data_ptr()
    assert attrs["compute"] == 68  # CUBLAS_COMPUTE_32F
    # linear_dgelu: dh.T (K', N) = w2 (stored (K', M') column-major) @ dy.T (M', N), with w2 (M', K') = (K, M)
    dy, w2, pre2 = torch.empty(N, K, **bf), torch.empty(K, M, **bf), torch.empty(N, M, **bf)
    dh = lt.linear_dgelu(dy, w2, pre2)
    assert dh.shape == (N, M)
    call = fake.launches[-1]
    assert call["a"] == (w2.data_ptr(), (14, M, K, M)) and call["b"] == (dy.data_ptr(), (14, K, N, K))
    assert call["d"] == (dh.data_ptr(), (14, M, N, M))
    assert call["attrs"][lt._DESC_EPILOGUE] == 192 and call["attrs"][lt._DESC_TRANSA] == 0
    assert call["attrs"][lt._DESC_AUX_POINTER] == pre2.data_ptr()
    # wgrad_bgrad: dw.T (K, M) = x.T (K, N) @ dy (stored (M, N) column-major, transposed), bias gradient along M
    dy3 = torch.empty(N, M, **bf)
    dw, db = lt.wgrad_bgrad(x, dy3)
    assert dw.shape == (M, K) and db.shape == (M,)
    call = fake.launches[-1]
    assert call["a"] == (x.data_ptr(), (14, K, N, K)) and call["b"] == (dy3.data_ptr(), (14, M, N, M))
    assert call["d"] == (dw.data_ptr(), (14, K, M, K))
    assert call["attrs"][lt._DESC_EPILOGUE] == 512 and call["attrs"][lt._DESC_TRANSB] == 1
    assert call["attrs"][lt._DESC_BIAS_POINTER] == db.data_ptr()
    assert lt._DESC_AUX_POINTER not in call["attrs"] and lt._DESC_AUX_LD not in call["attrs"]
    # a plan is reused for its shape, and the cache starts over past MAX_PLANS, destroying what it held
    lt.linear_dgelu(dy, w2, pre2)
    assert len(lt._plans) == 3 and not fake.destroyed
    monkeypatch.setattr(lt, "MAX_PLANS", 3)
    lt.linear_dgelu(torch.empty(2 * N, K, **bf), w2, torch.empty(2 * N, M, **bf))
    assert len(lt._plans) == 1 and len(fake.destroyed) == 12  # three plans: a descriptor and three layouts each


def test_cublaslt_times_the_heuristics_algorithms_once_per_shape_when_asked(monkeypatch):
    """$LMSTACK_CUBLASLT_ALGO: "first" (the default) asks the heuristic for one algorithm and launches it; "timed"
    asks for HEURISTIC_ALGOS, times each once per shape on the call's operands and launches the fastest from then
    on; not while a CUDA graph is being captured (the first, undecided); an algorithm the library refuses is passed
    over; a bad value is refused naming the choices."""
    from kernel import cublaslt as lt
    from specs.errors import ConfigError

    fake = _fake_library(monkeypatch, algos=3)
    ms = {1: 0.30, 2: 0.10, 3: 0.20}
    timed = []

    def fake_time(launch):  # what one timing launch ran, at the stand-in's speed
        status = launch()
        timed.append(fake.launches[-1]["algo"])
        return None if status else ms[fake.launches[-1]["algo"]]

    monkeypatch.setattr(lt, "_time_launch", fake_time)
    bf = dict(dtype=torch.bfloat16)
    dy, w, pre = torch.empty(24, 16, **bf), torch.empty(16, 32, **bf), torch.empty(24, 32, **bf)
    monkeypatch.delenv(lt.ALGO_ENV, raising=False)
    lt.linear_dgelu(dy, w, pre)
    assert fake.requested == [1] and fake.launches[-1]["algo"] == 1 and timed == []
    monkeypatch.setenv(lt.ALGO_ENV, "timed")  # changed mid-process: the shape gets a plan made the timed way
    lt.linear_dgelu(dy, w, pre)
    assert fake.requested[-1] == lt.HEURISTIC_ALGOS and timed == [1, 2, 3] and fake.launches[-1]["algo"] == 2
    first, plan = lt._plans.values()
    assert plan.times_ms == [0.30, 0.10, 0.20] and first.times_ms is None
    lt.linear_dgelu(dy, w, pre)  # decided: no more timing
    assert timed == [1, 2, 3] and fake.launches[-1]["algo"] == 2
    # under capture a new shape launches the heuristic's first and stays undecided until a call outside it
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    dy2, pre2 = torch.empty(48, 16, **bf), torch.empty(48, 32, **bf)
    lt.linear_dgelu(dy2, w, pre2)
    assert fake.launches[-1]["algo"] == 1 and timed == [1, 2, 3]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    lt.linear_dgelu(dy2, w, pre2)
    assert timed == [1, 2, 3, 1, 2, 3] and fake.launches[-1]["algo"] == 2
    # an algorithm the library refuses is passed over; all refused is an error naming the shape
    real = fake.cublasLtMatmul
    refuse = {2}
    monkeypatch.setattr(fake, "cublasLtMatmul", lambda *a: real(*a) or (15 if fake.launches[-1]["algo"] in refuse
                                                                          else 0))
    dy3, pre3 = torch.empty(72, 16, **bf), torch.empty(72, 32, **bf)
    lt.linear_dgelu(dy3, w, pre3)
    assert fake.launches[-1]["algo"] == 3
    refuse.update({1, 3})
    with pytest.raises(lt.CublasLtError, match=r"refused every one of the heuristic's 3 algorithms.*\(32, 96, 16\)"):
        lt.linear_dgelu(torch.empty(96, 16, **bf), w, torch.empty(96, 32, **bf))
    monkeypatch.setenv(lt.ALGO_ENV, "fastest")
    monkeypatch.setattr(lt, "_plans", {})
    with pytest.raises(ConfigError, match="LMSTACK_CUBLASLT_ALGO.*'first' .the default. or 'timed', got 'fastest'"):
        lt.linear_dgelu(dy, w, pre)
