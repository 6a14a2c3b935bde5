"""Weight-only int8 quantization, applied in place from outside the model (gpt-fast's WeightOnlyInt8Linear).

Each ``nn.Linear`` becomes :class:`Int8WeightOnlyLinear`: int8 weights with one symmetric scale per output channel
(absmax / 127). Forward is the kernel registry's ``int8_linear`` op, ``(x @ w_int8.T) * scale + b``: on a GPU a
Triton matmul that dequantises tiles in registers, so decode reads half the weight bytes of bf16 (decode at batch 1 is
bound by those bytes); elsewhere the pure-torch reference. (Leaving the conversion to inductor ran at 0.79x of bf16
on an H200: it materialised a bf16 copy of every weight each step.) Embeddings stay in full precision; the LM head is
quantized unless it shares its weight with the embedding (tied).

References: gpt-fast quantize.py (PyTorch team, 2023); LLM.int8() (Dettmers et al. 2022) for weight-only schemes.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel import resolve
from kernel.reference import UnifiedParts
from specs.errors import ConfigError

SCHEMES = ("int8_weight_only", "nf4")


class Int8WeightOnlyLinear(nn.Module):
    """``y = (x @ w_int8.T) * scale + b``; w_int8 (out, in) int8, scale (out,) in the weight's original dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w_OI = linear.weight.detach().float()
        scale_O = w_OI.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w_OI / scale_O[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale_O.to(linear.weight.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    # a folded RMSNorm's rms_eps and a residual are op keywords (tensor.folded): fold before quantizing
    accepts_prologue = True
    # forward(x, glu="silu") returns silu(gate) * up of a fused gate/up weight; a SwiGLU MLP asks for it only when
    # this is True (serve's FastGenerator(fuse_swiglu=True) sets it)
    accepts_glu = False
    # forward(x, att=parts) reads the input from a unified decode attention's accumulators (x = parts.x); an
    # attention layer asks only when this is True (FastGenerator(unified=...) sets it)
    accepts_att = False
    impl = "auto"  # the registry's int8_linear implementation; a decode loop may name one (FastGenerator)

    def forward(self, x: torch.Tensor, rms_eps: float | None = None,
                residual: torch.Tensor | None = None, glu: str | None = None,
                att: UnifiedParts | None = None) -> torch.Tensor:
        op = resolve("int8_linear", self.impl, device=x.device, dtype=x.dtype if att is None else att.dtype,
                     backward=torch.is_grad_enabled() and x.requires_grad)
        kw = {k: v for k, v in (("rms_eps", rms_eps), ("residual", residual), ("glu", glu), ("att", att))
              if v is not None}
        return op(x, self.weight, self.scale, self.bias, **kw)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def int8_weight_only_(model: nn.Module) -> int:
    """Replace every untied ``nn.Linear`` of ``model`` in place; return how many were replaced."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child.weight) not in embedding_weights:
                setattr(parent, name, Int8WeightOnlyLinear(child))
                count += 1
    if count == 0:
        raise ConfigError("quantize", f"{type(model).__name__} has no nn.Linear layers to quantize")
    return count


def quantize_(model: nn.Module, scheme: str = "int8_weight_only") -> int:
    """Quantize ``model`` in place with ``scheme`` (``int8_weight_only``, or ``nf4``: QLoRA's 4-bit base,
    :func:`compress.nf4.nf4_`); returns the number of layers replaced."""
    if scheme not in SCHEMES:
        raise ConfigError("quantize", f"unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme == "nf4":
        from compress.nf4 import nf4_

        return nf4_(model)
    return int8_weight_only_(model)
