"""QLoRA's frozen base: Linear layers stored as 4-bit NormalFloat with double-quantized absmaxes (Dettmers et al.
2023, arXiv:2305.14314; bitsandbytes' ``Linear4bit(quant_type="nf4")``), applied in place from outside the model.

``nf4_(model)`` replaces every ``nn.Linear`` but the LM head (kept in full precision, as transformers keeps it
under ``load_in_4bit``) by :class:`NF4Linear`: the weight's bytes in bitsandbytes' layout (``tensor.nf4``,
4.127 bits a weight with double quantization), the bias frozen as it was. Forward dequantizes the weight to the
compute dtype (autocast's, else the input's) and multiplies; backward dequantizes it again for the input's
gradient, so no full-precision weight is kept for backward (bitsandbytes' ``MatMul4Bit``). The weight gets no
gradient: LoRA adapters (``apply_lora``, which takes NF4Linear layers as it takes nn.Linear) train on top of it.

The 4-bit bytes are ``nf4_data``, a frozen ``nn.Parameter`` (uint8), so FSDP shards them as it shards any weight
(each rank holds its slice and gathers a layer's whole bytes as the layer runs: QLoRA under FSDP, as Answer.AI's
FSDP+QLoRA); ``nf4_absmax``, ``nf4_absmax_scale``, ``nf4_absmax_offset`` and ``nf4_shape`` are buffers (1/32 of the
bytes and less, kept whole on every rank; the fp32 scales are not cast by a mixed-precision policy). A
state_dict saves the 4-bit weight (safetensors, a quarter of bf16's bytes and less), and ``tensor.nf4``'s
``dequantize_state`` reads such a state back as plain weights (``TransformerLM.from_pretrained`` of a QLoRA run's
checkpoint). Dequantization is the kernel registry's ``nf4_dequantize`` op: one Triton pass over the bytes on a
GPU, pure torch elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kernel import resolve
from kernel.reference import matmul_dtype
from specs.errors import ConfigError
from tensor.nf4 import BLOCKSIZE, KEYS, quantize_nf4


def _weight(shape: tuple[int, int], blocksize: int, dtype: torch.dtype, *tensors: torch.Tensor | None) -> torch.Tensor:
    """The dense weight, through the kernel registry's ``nf4_dequantize`` (one Triton pass on a GPU)."""
    op = resolve("nf4_dequantize", device=tensors[0].device, dtype=dtype)
    return op(*tensors, shape, dtype, blocksize)


class _NF4Matmul(torch.autograd.Function):
    """``x @ W.T`` for the 4-bit W held by ``tensors`` (:data:`tensor.nf4.KEYS`' first four); W is dequantized
    again in backward instead of being saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: tuple[int, int], blocksize: int,
                *tensors: torch.Tensor | None) -> torch.Tensor:
        ctx.shape, ctx.blocksize = shape, blocksize
        ctx.save_for_backward(*tensors)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x, _weight(shape, blocksize, x.dtype, *tensors))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        none = (None,) * (2 + len(ctx.saved_tensors))
        if not ctx.needs_input_grad[0]:
            return (None, *none)
        with torch.autocast(grad.device.type, enabled=False):
            return (grad @ _weight(ctx.shape, ctx.blocksize, grad.dtype, *ctx.saved_tensors), *none)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is NF4 (see the module docstring); ``dtype`` is the weight's dtype before
    quantization (what :meth:`dequantized` returns by default and what adapters on it are created in)."""

    def __init__(self, linear: nn.Linear, *, blocksize: int = BLOCKSIZE, double_quant: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype, self.blocksize = linear.weight.dtype, blocksize
        for key, value in quantize_nf4(linear.weight.detach(), blocksize=blocksize, double_quant=double_quant).items():
            if key == "nf4_data":  # a frozen parameter: FSDP shards parameters (see the module docstring)
                self.nf4_data = nn.Parameter(value, requires_grad=False)
            else:
                self.register_buffer(key, value)
        for key in KEYS:
            if not hasattr(self, key):
                self.register_buffer(key, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self.nf4_data.device

    def _apply(self, fn: Any, recurse: bool = True) -> NF4Linear:
        # model.to(dtype) / .half(): the compute dtype follows; the fp32 absmaxes, scales and offset stay fp32
        self.dtype = fn(torch.empty((), dtype=self.dtype, device=self.device)).dtype
        kept = {k: getattr(self, k) for k in ("nf4_absmax", "nf4_absmax_scale", "nf4_absmax_offset")}
        super()._apply(fn, recurse)
        for key, t in kept.items():
            new = getattr(self, key)
            if t is not None and new.dtype != t.dtype:
                setattr(self, key, t.to(new.device))  # moved from the original: no round trip through bf16
        return self

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.nf4_data, self.nf4_absmax, self.nf4_absmax_scale, self.nf4_absmax_offset

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (out, in), dequantized to ``dtype`` (default: the original dtype)."""
        return _weight((self.out_features, self.in_features), self.blocksize, dtype or self.dtype, *self._tensors())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _NF4Matmul.apply(x.to(matmul_dtype(x)), (self.out_features, self.in_features), self.blocksize,
                               *self._tensors())
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the dequantized weight (in the original dtype)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.device,
                        dtype=self.dtype)
        with torch.no_grad():
            out.weight.copy_(self.dequantized())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        double = self.nf4_absmax is not None and self.nf4_absmax.dtype == torch.uint8
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"double_quant={double}")


def nf4_(model: nn.Module, *, double_quant: bool = True, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` of ``model`` in place by an :class:`NF4Linear`, except those whose name ends
    in one of ``skip`` and those whose weight an embedding shares (a tied head); returns how many were replaced.
    Adapt the model with ``apply_lora`` afterwards (QLoRA)."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if (type(child) is nn.Linear and id(child.weight) not in embedding_weights
                    and not any(full == s or full.endswith("." + s) for s in skip)):
                setattr(parent, name, NF4Linear(child, double_quant=double_quant).train(child.training))
                count += 1
    if count == 0:
        raise ConfigError("quantize", f"{type(model).__name__} has no nn.Linear layers to quantize to NF4 "
                          f"(skipping {', '.join(skip) or 'none'})")
    return count


def dequantize_(model: nn.Module) -> int:
    """Put a plain ``nn.Linear`` (the dequantized weight) back for every :class:`NF4Linear`; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NF4Linear):
                setattr(parent, name, child.to_linear().train(child.training))
                count += 1
    return count
