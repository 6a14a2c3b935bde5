"""What the Triton kernel tests share: the device they run on, the dtypes, and the low-precision tolerance.

On a CPU-only machine the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py); with
CUDA they run on the GPU. Low-precision tolerance: the kernel's error against the fp32 reference is at most
``factor`` times the error of the same op computed by torch in the low dtype (2x; 4x for bf16 under the
interpreter, which rounds by truncation, see test_triton_ops.test_interpreter_bf16_conversion_truncates).
"""

from __future__ import annotations

import os

import torch

from kernel import default_registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and DEVICE == "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def factor(dtype):
    return 4.0 if (INTERPRETED and dtype == torch.bfloat16) else 2.0


def triton_fn(op):
    return default_registry().get(op, "triton").load()


def check(name, got, ref32, lowp, dtype, fp32_atol=1e-5):
    """got/lowp: results in ``dtype``; ref32: the fp32 reference on the same (rounded) inputs."""
    err = (got.float() - ref32).abs().max().item()
    if dtype == torch.float32:
        assert err <= fp32_atol, f"{name}: {err:.2e}"
    else:
        base = (lowp.float() - ref32).abs().max().item()
        # plus one unit in the last place of the largest output: below that, differences are rounding order
        ulp = torch.finfo(dtype).eps * ref32.abs().max().item()
        assert err <= factor(dtype) * base + ulp + 1e-6, f"{name} {dtype}: {err:.2e} vs torch {base:.2e}"


def grads(fn, inputs, g):
    ins = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*ins)
    return out, torch.autograd.grad(out, ins, g.to(out.dtype))


def rand(*shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


# the decode attention kernel's (``kernel.triton.decode_attention._decode``) arguments and their sm90 types, for the
# tests that compile it offline (a bf16 cache, int64 lengths, fp32 split partials, int32 counters)
DECODE_ARG_NAMES = ["q_ptr", "k_ptr", "v_ptr", "lens_ptr", "table_ptr", "o_ptr", "acc_ptr", "m_ptr", "l_ptr", "kn_ptr",
                    "vn_ptr", "cos_ptr", "sin_ptr", "cnt_ptr", "stride_qb", "stride_qh", "stride_kb", "stride_kh",
                    "stride_ks", "stride_vb", "stride_vh", "stride_vs", "stride_tb", "stride_ob", "stride_oh",
                    "stride_knb", "stride_knh", "stride_vnb", "stride_vnh", "stride_cb", "scale", "G", "Dh", "H", "NS",
                    "KVH", "L", "ws_ptr", "zero_ptr", "WS"]
DECODE_ARG_TYPES = (["*bf16"] * 3 + ["*i64"] * 2 + ["*bf16"] + ["*fp32"] * 3 + ["*bf16"] * 4 + ["*i32"] + ["i32"] * 16
                    + ["fp32"] + ["i32"] * 6 + ["*fp32"] * 2 + ["i32"])


def compile_offline(script: str, *args: str, timeout: int = 300) -> str:
    """Run ``script`` (Python that compiles Triton kernels for a GPU target and writes their code to stdout) in a
    subprocess without Triton's interpreter, so it compiles for real on a machine with no GPU, with this directory
    first on its path (the scripts import the test modules' helpers); its stdout."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), *sys.path])
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
