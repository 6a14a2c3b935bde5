"""The implementations lmstack ships, with what each supports. Targets are imported lazily on first use."""

from __future__ import annotations

import torch

from kernel.implementation import OPS, Implementation

LOW_PRECISION = (torch.float16, torch.bfloat16)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)

# Triton kernels: CUDA only (the CPU tests run them under TRITON_INTERPRET=1 by calling them directly).
TRITON_TARGETS = {
    "attention": "kernel.triton.attention:attention",
    "rmsnorm": "kernel.triton.rmsnorm:rmsnorm",
    "rope": "kernel.triton.rope:rope",
    "swiglu": "kernel.triton.swiglu:swiglu",
    "cross_entropy": "kernel.triton.linear_ce:cross_entropy",
    "linear_cross_entropy": "kernel.triton.linear_ce:linear_cross_entropy",
    "int8_linear": "kernel.triton.int8_linear:int8_linear",
    "decode_attention": "kernel.triton.decode_attention:decode_attention",
    "decode_layer": "kernel.triton.decode_layer:decode_layer",
    "decode_attention_unified": "kernel.triton.decode_attention:decode_attention_unified_op",
    "lora": "kernel.triton.lora:lora",
    "nf4_dequantize": "kernel.triton.nf4:nf4_dequantize",
}


# references that live in a module of their own (kernel.reference holds the rest)
REFERENCE_TARGETS = {"lora": "kernel.lora:lora", "nf4_dequantize": "kernel.nf4:nf4_dequantize"}

# kernels without a backward
INFERENCE_ONLY = ("int8_linear", "decode_attention", "linear", "decode_layer", "decode_attention_unified", "lora",
                  "nf4_dequantize")

# 'auto' tries higher priorities first. Measured on an H200 (bench_kernels.py, bf16, 2026-11-28): torch SDPA's
# attention ran fwd 0.19 ms / fwd+bwd 0.81 ms against the Triton kernel's 0.31 / 1.42 ms, so SDPA (10) outranks it;
# the other Triton kernels beat their references (RMSNorm 4x fwd, RoPE 5x, SwiGLU 1.8x, linear+CE 4x).
# The persistent decode-layer kernel measured slower than the per-op path it replaces (docs/benchmarks.md), so
# `auto` keeps the torch reference (and FastGenerator's layer_kernel="auto" stays off); asked for by name.
TRITON_PRIORITY = {"attention": 5, "decode_layer": -5}


def reference_implementations() -> list[Implementation]:
    """The pure-torch reference of every op: any device, any dtype, every feature; the last fallback."""
    return [Implementation(op=op, name="reference", target=REFERENCE_TARGETS.get(op, f"kernel.reference:{op}"),
                           fallback=None, description="pure torch, float32 math") for op in OPS]


def triton_implementations() -> list[Implementation]:
    """The Triton kernels in ``kernel.triton``; sm80+ so bf16 tensor cores exist (fp16/fp32 run on older cards too,
    but they are untested there)."""
    return [Implementation(op=op, name="triton", target=target, priority=TRITON_PRIORITY.get(op, 20),
                           devices=("cuda",), dtypes=FLOATS,
                           requires=("triton",), min_capability=(8, 0),
                           max_head_dim=256 if op == "attention" else None, backward=op not in INFERENCE_ONLY,
                           description=f"Triton {op} kernel (kernel/triton)") for op, target in TRITON_TARGETS.items()]


def builtin_implementations() -> list[Implementation]:
    return [
        *triton_implementations(),
        *reference_implementations(),
        Implementation(op="linear_cross_entropy", name="logits", target="kernel.reference:linear_cross_entropy_logits",
                       priority=-10, description="materialised logits + cross_entropy (chosen under torch.compile)"),
        # Materialised logits in the matmul's dtype, turned into their gradient in place by one Triton pass, the
        # gradient matmuls in the forward (kernel/triton/linear_ce.py); the whole batch as one chunk when it fits.
        Implementation(op="linear_cross_entropy", name="triton_inplace",
                       target="kernel.triton.linear_ce:linear_cross_entropy_inplace", priority=19, devices=("cuda",),
                       dtypes=FLOATS, requires=("triton",), min_capability=(8, 0),
                       description="logits (bf16 under autocast) overwritten by their gradient in one Triton pass"),
        # GPT-2's MLP with the GELU in cuBLASLt matmul epilogues (kernel/gelu_mlp.py): one pass fewer over the
        # (N, F) activations each way than separate GELU kernels; +2.2% on a compiled GPT-2 124M step (H200).
        Implementation(op="gelu_mlp", name="cublaslt", target="kernel.gelu_mlp:gelu_mlp", priority=20,
                       devices=("cuda",), dtypes=LOW_PRECISION, min_capability=(8, 0),
                       description="cuBLASLt matmuls with GELU epilogues (GELU_AUX_BIAS forward, DGELU backward)"),
        # The same with each projection's bias gradient from its weight-gradient matmul (BGRADB): by name only until
        # a GPU has timed it (tools/gpu_pending.sh gelu-bgrad).
        Implementation(op="gelu_mlp", name="cublaslt_bgrad", target="kernel.gelu_mlp:gelu_mlp_bgrad", priority=19,
                       devices=("cuda",), dtypes=LOW_PRECISION, min_capability=(8, 0),
                       description="cublaslt, the bias gradients from the weight-gradient matmuls' epilogues (BGRADB)"),
        Implementation(op="attention", name="sdpa", target="kernel.sdpa:attention", priority=10,
                       description="torch scaled_dot_product_attention (flash / efficient / cuDNN / math back ends)"),
        # Skinny (decode) matmuls with pipelined weight streaming and per-card tuned tiles. Measured on an H200
        # (docs/benchmarks.md): int8 at 1.1-2.1x the Triton GEMV per shape, bf16 level with cuBLAS per call and +4% on a
        # whole 1.1B decode step against inductor's GEMVs; so `auto` picks them for inference on CUDA.
        # (bf16/fp16 only: fp32 decode matmuls were never timed, and cuBLAS is the safe choice there)
        Implementation(op="linear", name="triton_skinny", target="kernel.triton.skinny:linear", priority=5,
                       devices=("cuda",), dtypes=LOW_PRECISION, requires=("triton",), min_capability=(8, 0),
                       backward=False,
                       description="Triton skinny matmul for decode rows (kernel/triton; torch matmul past 16 rows)"),
        Implementation(op="int8_linear", name="triton_skinny", target="kernel.triton.skinny:int8_linear",
                       priority=25, devices=("cuda",), dtypes=FLOATS, requires=("triton",), min_capability=(8, 0),
                       backward=False, description="Triton skinny int8 matmul for decode rows (kernel/triton; "
                       "dequantise + torch matmul past 16 rows)"),
        # The same kernels launched with programmatic dependent launch (Hopper+; an opaque op to torch.compile so
        # Triton's launcher sets the launch attribute): never chosen by `auto` (priority below triton_skinny), asked
        # for by name (FastGenerator(linear_impl="triton_skinny_pdl")); a whole H200 decode step ran 0.95x with it.
        Implementation(op="linear", name="triton_skinny_pdl", target="kernel.triton.skinny:linear_pdl", priority=4,
                       devices=("cuda",), dtypes=LOW_PRECISION, requires=("triton",), min_capability=(9, 0),
                       backward=False, description="triton_skinny launched with programmatic dependent launch, its "
                       "weights prefetched to L2 while the kernel before it drains (sm90+)"),
        Implementation(op="int8_linear", name="triton_skinny_pdl", target="kernel.triton.skinny:int8_linear_pdl",
                       priority=24, devices=("cuda",), dtypes=FLOATS, requires=("triton",), min_capability=(9, 0),
                       backward=False, description="int8 triton_skinny with programmatic dependent launch (sm90+)"),
        # decode_attention launched with programmatic dependent launch (an opaque op that writes the caches), so a
        # chain of PDL-launched decode kernels runs through attention: never chosen by `auto` (it pays only inside
        # such a chain); FastGenerator asks for it where its Linears are chained by PDL. Waiting first it gained
        # nothing (+0.3% in run X, -2.6% in Y); loading a block of the cache before its wait, +1.2% (AE)
        Implementation(op="decode_attention", name="triton_pdl",
                       target="kernel.triton.decode_attention:decode_attention_pdl", priority=4, devices=("cuda",),
                       dtypes=FLOATS, requires=("triton",), min_capability=(9, 0), max_head_dim=256, backward=False,
                       description="the Triton decode attention kernels launched with programmatic dependent launch "
                       "(sm90+)"),
        # the same for the unified-shift decode attention (the o projection reads its accumulators): asked for with
        # triton_pdl's decode attention (FastGenerator(unified=...))
        Implementation(op="decode_attention_unified", name="triton_pdl",
                       target="kernel.triton.decode_attention:decode_attention_unified_pdl", priority=4,
                       devices=("cuda",), dtypes=FLOATS, requires=("triton",), min_capability=(9, 0),
                       max_head_dim=256, backward=False,
                       description="the Triton unified-shift decode attention launched with programmatic dependent "
                       "launch (sm90+)"),
        Implementation(op="decode_attention", name="sdpa", target="kernel.sdpa:decode_attention", priority=10,
                       backward=False, description="masked torch SDPA over the gathered slots (the Triton kernel's "
                       "baseline: on an H200 a decode layer took ~10 us this way against 4.7 us)"),
        Implementation(op="attention", name="flash", target="kernel.flash:attention", priority=30,
                       devices=("cuda",), dtypes=LOW_PRECISION, max_head_dim=256, head_dim_multiple=8,
                       mask=False, bias=False, window=False, min_capability=(8, 0), requires=("flash_attn",),
                       fallback="sdpa", description="flash-attn 2 (Dao 2023)"),
    ]
