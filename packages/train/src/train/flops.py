"""Model FLOPs per token and model FLOPs utilisation (MFU).

Training FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B) as torchtitan does::

    flops_per_token = 6 * N + 12 * n_layers * d_model * seq_len

``N`` counts the parameters that take part in matmuls: all of them minus embedding lookups (an ``nn.Embedding``
whose weight is not shared with a Linear head). The second term is attention's score and value matmuls (counted
over the full T x T square; causal kernels skip about half, so MFU for causal models is a slight overestimate, the
usual convention). ``6`` = 2 (multiply-add) x 3 (forward, backward for activations, backward for weights).

``mfu = flops_per_token * tokens_per_s / (peak_flops * n_devices)``. Peak figures are the dense (no sparsity)
bf16/fp16 tensor-core numbers from each vendor's datasheet, used whatever precision the run uses (so an fp32 run
shows how far it is from the card's best). CPUs and unknown devices have no entry: their MFU is None.

============================ =============== =====================================================
device name contains         peak FLOP/s     source
============================ =============== =====================================================
H200                         989.5e12        NVIDIA H200 datasheet (SXM, same tensor cores as H100)
H100 + NVL                   835.0e12        NVIDIA H100 NVL datasheet
H100 + PCIe                  756.0e12        NVIDIA H100 PCIe datasheet
H100                         989.5e12        NVIDIA H100 SXM5 datasheet
GH200                        989.5e12        NVIDIA GH200 datasheet
B200                         2250e12         NVIDIA B200 (HGX B200) datasheet
A100                         312.0e12        NVIDIA A100 datasheet (SXM4 and PCIe)
A10                          125.0e12        NVIDIA A10 datasheet (also matches A10G)
L40S                         362.1e12        NVIDIA L40S datasheet
L4                           121.0e12        NVIDIA L4 datasheet
RTX 4090                     165.2e12        NVIDIA Ada whitepaper (fp16 tensor, fp32 accumulate)
RTX 3090                     71.0e12         NVIDIA Ampere GA102 whitepaper (fp32 accumulate)
V100                         125.0e12        NVIDIA V100 SXM2 datasheet (fp16; no bf16)
T4                           65.0e12         NVIDIA T4 datasheet (fp16; no bf16)
MI300X                       1307.4e12       AMD Instinct MI300X datasheet
MI250X                       383.0e12        AMD Instinct MI250X datasheet
============================ =============== =====================================================
"""

from __future__ import annotations

import torch
from torch import nn

# Checked in order: more specific names first (an "H100 NVL" also contains "H100").
PEAK_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("GH200",), 989.5e12),
    (("H200",), 989.5e12),
    (("H100", "NVL"), 835.0e12),
    (("H100", "PCIe"), 756.0e12),
    (("H100",), 989.5e12),
    (("B200",), 2250e12),
    (("A100",), 312.0e12),
    (("A10",), 125.0e12),
    (("L40S",), 362.1e12),
    (("L4",), 121.0e12),
    (("RTX 4090",), 165.2e12),
    (("RTX 3090",), 71.0e12),
    (("V100",), 125.0e12),
    (("T4",), 65.0e12),
    (("MI300X",), 1307.4e12),
    (("MI250X",), 383.0e12),
)


def peak_flops_for_name(name: str) -> float | None:
    upper = name.upper()
    for keys, flops in PEAK_FLOPS:
        if all(k.upper() in upper for k in keys):
            return flops
    return None


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` from the table above; None for CPUs and unknown devices."""
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def matmul_params(model: nn.Module) -> int:
    """Parameters used in matmuls: all floating ones, minus embedding-lookup tables not tied to a Linear layer,
    plus the weights of 4-bit Linear layers (counted from their shapes: their parameter is packed bytes)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen and p.is_floating_point():
            seen.add(id(p))
            total += p.numel()
    for m in model.modules():  # a 4-bit frozen Linear (QLoRA's NF4Linear) holds its weight as packed bytes
        shape = getattr(m, "nf4_shape", None)
        if isinstance(shape, torch.Tensor):
            total += getattr(m, "in_features", 0) * getattr(m, "out_features", 0)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookups = {id(m.weight): m.weight.numel() for m in model.modules()
               if isinstance(m, nn.Embedding) and id(m.weight) not in linear_weights}
    return total - sum(lookups.values())


def flops_per_token(n_matmul_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """PaLM's training FLOPs per token: ``6 N + 12 L D T``."""
    return 6.0 * n_matmul_params + 12.0 * n_layers * d_model * seq_len


def mfu(flops_token: float, tokens_per_s: float, peak: float | None, n_devices: int) -> float | None:
    """Achieved / peak FLOP/s in [0, 1] (None when the peak is unknown)."""
    if peak is None or peak <= 0:
        return None
    return flops_token * tokens_per_s / (peak * n_devices)
