"""cuBLASLt matmuls with GELU and bias-gradient epilogues, called through ctypes on the library torch loaded.

Calls that torch does not expose, all of NVIDIA's cuBLASLt (the epilogues Transformer Engine and Megatron use
for GPT MLPs; cuBLAS docs, "cublasLtEpilogue_t"):

- :func:`gelu_linear` ``(x @ w.T + b) -> (gelu_tanh(h), h)``: ``CUBLASLT_EPILOGUE_GELU_AUX_BIAS``. The matmul writes
  the activation and, as its auxiliary output, the pre-activation ``h`` that the backward needs; no separate GELU
  pass reads ``h`` again.
- :func:`linear_dgelu` ``(dy @ w) * gelu_tanh'(h) -> dh``: ``CUBLASLT_EPILOGUE_DGELU``. The data-gradient matmul
  of the projection after the GELU applies the GELU derivative in its epilogue; no separate pass reads the GELU's
  output gradient and input again. (``CUBLASLT_EPILOGUE_DGELU_BGRAD``, which would also sum the bias gradient,
  ran a separate epilogue kernel of ~0.3 ms per GPT-2 layer on an H200: a 124M training step 5.8% slower than
  without it, where this one made it 2.2% faster; docs/benchmarks.md.)
- :func:`wgrad_bgrad` ``(x, dy) -> (dy.T @ x, dy.sum(0))``: ``CUBLASLT_EPILOGUE_BGRADB``. A Linear's weight-gradient
  matmul also sums its bias gradient, over the matmul's own K loop (the rows), instead of a separate pass over
  ``dy``. ``gelu_mlp``'s ``cublaslt_bgrad`` implementation uses it, by name only: cuBLASLt ran the epilogue as a
  separate reduction kernel, and a GPT-2 124M step on an H200 came out 2% slower (docs/benchmarks.md, run 12).

cuBLASLt's GELU is the tanh approximation (GPT-2's ``gelu_new``). Row-major (N, K) @ (K, M) products are issued as
the column-major (M, N) = (M, K) @ (K, N) that cuBLASLt computes, so bias vectors run along the feature dim.
The library is the one already mapped into the process (torch's), found through ``/proc/self/maps``, so handles and
streams are torch's own; descriptors and the algorithm are cached per shape. The algorithm is the heuristic's first
(``$LMSTACK_CUBLASLT_ALGO=first``, the default) or (``timed``) the fastest of the heuristic's first
:data:`HEURISTIC_ALGOS`, each timed once per shape on the call's own operands the first time that shape runs outside
CUDA-graph capture. That was tried because the heuristic gave GPT-2's ``DGELU`` data gradient a one-warpgroup kernel
at ~455 TFLOP/s, where its plain matmuls of the same size run at ~700; the timed choice came out level on the
whole step (run 13).

Shape legend: N rows (tokens), K input features, M output features.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from specs.errors import ConfigError, ShapeError

# cudaDataType_t, cublasComputeType_t, cublasOperation_t and cuBLASLt attribute values (cublasLt.h, library_types.h)
_CUDA_TYPES = {torch.float16: 2, torch.bfloat16: 14}
_CUDA_R_32F = 0
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD = 11, 12
_PREF_MAX_WORKSPACE_BYTES = 1
EPILOGUE_GELU_AUX = 32 | 128
EPILOGUE_GELU_AUX_BIAS = EPILOGUE_GELU_AUX | 4
EPILOGUE_DGELU = 64 | 128
EPILOGUE_BGRADB = 512
WORKSPACE_BYTES = 32 << 20  # what cuBLAS recommends for Hopper
ALGO_ENV = "LMSTACK_CUBLASLT_ALGO"  # "first": the heuristic's first algorithm; "timed": the fastest of its first few
HEURISTIC_ALGOS = 8  # how many of the heuristic's algorithms "timed" compares
TIMING_REPS = 3  # launches per algorithm timed (after one warm-up launch)


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


class CublasLtError(RuntimeError):
    """cuBLASLt could not be loaded or refused a call (the status code and the call are in the message)."""


def _loaded_library_path() -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                if "libcublasLt.so" in path:
                    return path
    except OSError:
        return None
    return None


_lock = threading.Lock()
_state: dict[Any, Any] = {}  # the library, and per device its handle and workspace
MAX_PLANS = 256  # cached descriptor sets (one per shape and epilogue)


def _lib() -> ctypes.CDLL:
    if "lib" in _state:
        return _state["lib"]
    torch.cuda.init()
    names = [p for p in (_loaded_library_path(),) if p] + ["libcublasLt.so.13", "libcublasLt.so.12"]
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    else:
        raise CublasLtError("cannot load libcublasLt (torch's CUDA build ships it): " + "; ".join(errors))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_int64]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int,
                                                   ctypes.POINTER(_HeuristicResult), ctypes.POINTER(ctypes.c_int)]
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp]
    _state["lib"] = lib
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"cuBLASLt {what} failed with status {status} (cublasStatus_t)")


def _handle(device: torch.device) -> ctypes.c_void_p:
    key = ("handle", device.index)
    if key not in _state:
        h = ctypes.c_void_p()
        with torch.cuda.device(device):
            _check(_lib().cublasLtCreate(ctypes.byref(h)), "cublasLtCreate")
        _state[key] = h
    return _state[key]


def _workspace(device: torch.device) -> torch.Tensor:
    key = ("workspace", device.index)
    if key not in _state:
        _state[key] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _state[key]


@dataclass
class _Plan:
    desc: ctypes.c_void_p
    a: ctypes.c_void_p
    b: ctypes.c_void_p
    d: ctypes.c_void_p
    algos: list[_HeuristicResult]  # the heuristic's, best first
    algo: _HeuristicResult | None  # the one launched; None until timed ("timed" with several to compare)
    times_ms: list[float | None] | None = None  # per algorithm in ``algos``, once timed (None: it refused the call)


def timed_algos() -> bool:
    """Whether each shape's algorithm is the fastest of the heuristic's first few, timed (``$LMSTACK_CUBLASLT_ALGO``:
    "first", the default, or "timed")."""
    raw = os.environ.get(ALGO_ENV, "first")
    if raw not in ("first", "timed"):
        raise ConfigError(ALGO_ENV, f"expected 'first' (the default) or 'timed', got {raw!r}")
    return raw == "timed"


_plans: dict[tuple[Any, ...], _Plan] = {}


def _set(lib: ctypes.CDLL, desc: ctypes.c_void_p, attr: int, value: Any) -> None:
    _check(lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
           f"setting matmul attribute {attr}")


def _plan(device: torch.device, dtype: torch.dtype, epilogue: int, transa: int, transb: int, m: int, n: int, k: int,
          lda: int, ldb: int, has_bias: bool, has_aux: bool) -> _Plan:
    """Descriptors and the heuristic's first algorithm for D (m, n) = op(A) (m, k) @ op(B) (k, n), column-major,
    ldd = m (and the auxiliary matrix's ld = m). Pointers are set per call; the heuristic sees representative
    (256-byte aligned) ones. Called with ``_lock`` held, so no plan is destroyed while another thread launches it."""
    timed = timed_algos()  # part of the key: a process that changes the setting gets plans made its new way
    key = (device.index, dtype, epilogue, transa, transb, m, n, k, lda, ldb, has_bias, has_aux, timed)
    if key in _plans:
        return _plans[key]
    lib, cu = _lib(), _CUDA_TYPES[dtype]
    if len(_plans) >= MAX_PLANS:  # many distinct row counts (eager inference over varied lengths): start over
        for old in _plans.values():
            lib.cublasLtMatmulDescDestroy(old.desc)
            for lay in (old.a, old.b, old.d):
                lib.cublasLtMatrixLayoutDestroy(lay)
        _plans.clear()
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _CUDA_R_32F), "cublasLtMatmulDescCreate")
    _set(lib, desc, _DESC_TRANSA, ctypes.c_int32(transa))
    _set(lib, desc, _DESC_TRANSB, ctypes.c_int32(transb))
    _set(lib, desc, _DESC_EPILOGUE, ctypes.c_uint32(epilogue))
    if has_aux:
        _set(lib, desc, _DESC_AUX_LD, ctypes.c_int64(m))
    layouts = []
    rows_a, cols_a = (k, m) if transa == _OP_T else (m, k)
    rows_b, cols_b = (n, k) if transb == _OP_T else (k, n)
    for rows, cols, ld in ((rows_a, cols_a, lda), (rows_b, cols_b, ldb), (m, n, m)):
        lay = ctypes.c_void_p()
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(lay), cu, rows, cols, ld), "cublasLtMatrixLayoutCreate")
        layouts.append(lay)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    ws = ctypes.c_uint64(WORKSPACE_BYTES)
    _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws),
                                                    ctypes.sizeof(ws)), "setting the workspace preference")
    # the heuristic reads the bias / aux pointers' alignment: give it aligned dummies
    dummy = ctypes.c_void_p(_workspace(device).data_ptr())
    if has_bias:
        _set(lib, desc, _DESC_BIAS_POINTER, dummy)
    if has_aux:
        _set(lib, desc, _DESC_AUX_POINTER, dummy)
    wanted = HEURISTIC_ALGOS if timed else 1
    results, count = (_HeuristicResult * wanted)(), ctypes.c_int(0)
    status = lib.cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, layouts[0], layouts[1], layouts[2], layouts[2],
                                                pref, wanted, results, ctypes.byref(count))
    lib.cublasLtMatmulPreferenceDestroy(pref)
    if status != 0 or count.value == 0:
        raise CublasLtError(f"cuBLASLt has no algorithm for epilogue {epilogue} at (m, n, k) = ({m}, {n}, {k}), "
                            f"{dtype} (status {status}, {count.value} found)")
    algos = [results[i] for i in range(min(count.value, wanted))]
    plan = _Plan(desc, layouts[0], layouts[1], layouts[2], algos, algos[0] if len(algos) == 1 else None)
    _plans[key] = plan
    return plan


def _matmul(epilogue: int, transa: int, transb: int, m: int, n: int, k: int, lda: int, ldb: int, a: torch.Tensor,
            b: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None, aux: torch.Tensor | None) -> None:
    """D = op(A) @ op(B) with ``epilogue`` (see :func:`_plan` for the shapes), on torch's current stream."""
    lib, device = _lib(), d.device
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    with _lock, torch.cuda.device(device):  # one descriptor per shape: find it, set its pointers and launch
        plan = _plan(device, d.dtype, epilogue, transa, transb, m, n, k, lda, ldb, bias is not None, aux is not None)
        if bias is not None:
            _set(lib, plan.desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        if aux is not None:
            _set(lib, plan.desc, _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)

        def launch(algo: _HeuristicResult) -> int:
            return lib.cublasLtMatmul(_handle(device), plan.desc, ctypes.byref(alpha), ctypes.c_void_p(a.data_ptr()),
                                      plan.a, ctypes.c_void_p(b.data_ptr()), plan.b, ctypes.byref(beta),
                                      ctypes.c_void_p(d.data_ptr()), plan.d, ctypes.c_void_p(d.data_ptr()), plan.d,
                                      ctypes.byref(algo.algo), ctypes.c_void_p(_workspace(device).data_ptr()),
                                      WORKSPACE_BYTES, stream)

        algo = plan.algo
        if algo is None:
            if torch.cuda.is_current_stream_capturing():  # no timing inside a CUDA graph: the first, undecided
                algo = plan.algos[0]
            else:  # every output is written again by the chosen algorithm's launch below (beta = 0)
                plan.times_ms = [_time_launch(lambda al=al: launch(al)) for al in plan.algos]
                ran = [i for i, t in enumerate(plan.times_ms) if t is not None]
                if not ran:
                    raise CublasLtError(f"cuBLASLt refused every one of the heuristic's {len(plan.algos)} algorithms "
                                        f"for epilogue {epilogue} at (m, n, k) = ({m}, {n}, {k})")
                algo = plan.algo = plan.algos[min(ran, key=lambda i: plan.times_ms[i])]
        _check(launch(algo), "cublasLtMatmul")


def _time_launch(launch: Any) -> float | None:
    """ms per call of ``launch`` (a cuBLASLt status-returning call) on the current stream: one warm-up call, then
    :data:`TIMING_REPS` between CUDA events; None where the library refuses it."""
    if launch() != 0:
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMING_REPS):
        if launch() != 0:
            return None
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TIMING_REPS


def _on_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the epilogue matmuls take these operands: CUDA, fp16/bf16 of one dtype, contiguous, and feature dims
    that are multiples of 8 (cuBLASLt's leading-dimension rule for the auxiliary matrix)."""
    return (_on_cuda(x) and x.dtype in _CUDA_TYPES and weight.dtype == x.dtype and x.dim() == 2 and weight.dim() == 2
            and all(s % 8 == 0 for s in weight.shape) and x.is_contiguous() and weight.is_contiguous())


def gelu_linear(x_NK: torch.Tensor, weight_MK: torch.Tensor,
                bias_M: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x @ weight.T + bias``; returns ``(gelu_tanh(h), h)``, both (N, M), from one cuBLASLt matmul."""
    bias_ok = bias_M is None or (bias_M.shape == weight_MK.shape[:1] and bias_M.dtype == x_NK.dtype
                                 and bias_M.device == x_NK.device)
    if not supports(x_NK, weight_MK) or x_NK.shape[1] != weight_MK.shape[1] or not bias_ok:
        raise ShapeError(f"gelu_linear: needs contiguous CUDA fp16/bf16 x (N, K), weight (M, K) and bias (M,) of one "
                         f"dtype with K, M multiples of 8, got x {tuple(x_NK.shape)} {x_NK.dtype}, weight "
                         f"{tuple(weight_MK.shape)} {weight_MK.dtype}, bias "
                         f"{None if bias_M is None else (tuple(bias_M.shape), bias_M.dtype)}")
    (N, K), M = x_NK.shape, weight_MK.shape[0]
    out = torch.empty((N, M), dtype=x_NK.dtype, device=x_NK.device)
    pre = torch.empty_like(out)
    if N == 0:
        return out, pre
    epilogue = EPILOGUE_GELU_AUX if bias_M is None else EPILOGUE_GELU_AUX_BIAS
    # column-major: out.T (M, N) = weight (as (K, M), transposed) @ x.T (K, N)
    _matmul(epilogue, _OP_T, _OP_N, M, N, K, K, K, weight_MK, x_NK, out,
            None if bias_M is None else bias_M.contiguous(), pre)
    return out, pre


def linear_dgelu(dy_NM: torch.Tensor, weight_MK: torch.Tensor, pre_NK: torch.Tensor) -> torch.Tensor:
    """The input gradient of ``gelu_tanh(pre) @ weight.T`` through the GELU: ``(dy @ weight) * gelu_tanh'(pre)``,
    (N, K), from one cuBLASLt matmul (``CUBLASLT_EPILOGUE_DGELU``)."""
    if not supports(dy_NM, weight_MK) or dy_NM.shape[1] != weight_MK.shape[0] or pre_NK.shape != (
            dy_NM.shape[0], weight_MK.shape[1]) or pre_NK.dtype != dy_NM.dtype or not pre_NK.is_contiguous():
        raise ShapeError(f"linear_dgelu: needs contiguous CUDA fp16/bf16 dy (N, M), weight (M, K) and pre (N, K) with "
                         f"K, M multiples of 8, got dy {tuple(dy_NM.shape)} {dy_NM.dtype}, weight "
                         f"{tuple(weight_MK.shape)} {weight_MK.dtype}, pre {tuple(pre_NK.shape)} {pre_NK.dtype}")
    (N, M), K = dy_NM.shape, weight_MK.shape[1]
    dh = torch.empty((N, K), dtype=dy_NM.dtype, device=dy_NM.device)
    if N == 0:
        return dh
    # column-major: dh.T (K, N) = weight (as (K, M)) @ dy.T (M, N)
    _matmul(EPILOGUE_DGELU, _OP_N, _OP_N, K, N, M, K, M, weight_MK, dy_NM, dh, None, pre_NK)
    return dh


def wgrad_bgrad(x_NK: torch.Tensor, dy_NM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear's weight and bias gradients from its input ``x`` and output gradient ``dy``: ``dy.T @ x`` (M, K) and
    ``dy.sum(0)`` (M,), from one cuBLASLt matmul (``CUBLASLT_EPILOGUE_BGRADB``: the sum runs over the product's
    own K loop, the N rows, so no pass reads ``dy`` again for it)."""
    ok = (_on_cuda(x_NK) and x_NK.dtype in _CUDA_TYPES and dy_NM.dtype == x_NK.dtype and x_NK.dim() == dy_NM.dim() == 2
          and dy_NM.shape[0] == x_NK.shape[0] and x_NK.shape[1] % 8 == 0 and dy_NM.shape[1] % 8 == 0
          and x_NK.is_contiguous() and dy_NM.is_contiguous())
    if not ok:
        raise ShapeError(f"wgrad_bgrad: needs contiguous CUDA fp16/bf16 x (N, K) and dy (N, M) of one dtype with K, M "
                         f"multiples of 8, got x {tuple(x_NK.shape)} {x_NK.dtype}, dy {tuple(dy_NM.shape)} "
                         f"{dy_NM.dtype}")
    (N, K), M = x_NK.shape, dy_NM.shape[1]
    dw = torch.empty((M, K), dtype=x_NK.dtype, device=x_NK.device)
    db = torch.empty(M, dtype=x_NK.dtype, device=x_NK.device)
    if N == 0:
        return dw.zero_(), db.zero_()
    # column-major: dw.T (K, M) = x.T (K, N) @ dy (stored (M, N), transposed: (N, M)); the bias gradient runs along
    # D's columns (M), summed over the product's K (N): BGRADB
    _matmul(EPILOGUE_BGRADB, _OP_N, _OP_T, K, M, N, K, M, x_NK, dy_NM, dw, db, None)
    return dw, db
