"""Post-training quantization applied from outside the model (gpt-fast's ``quantize.py`` pattern).

- ONNX: onnxruntime dynamic quantization (``quantize_dynamic``: int8 weights with per-channel scales,
  activations quantized on the fly; MatMul -> MatMulInteger, Gather on a dequantized table).
- torch targets: :class:`Int8WeightOnlyLinear` replaces every ``nn.Linear`` of a *copy* of the model with int8
  weights and one fp scale per output channel (symmetric, absmax/127), dequantized inside forward. torch.export and
  TorchScript then store int8 tensors, so the artifact shrinks ~4x in its linear layers.
- FP8: torchao's ``Float8WeightOnlyConfig`` on a CUDA GPU of compute capability >= 8.9 (Ada, Hopper and newer).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from export.errors import ExportError, MissingDependencyError

FP8_MIN_CAPABILITY = (8, 9)

INT4_ONLY_GGUF = ("int4 (4-bit blocks of 32) is written by target 'gguf' alone (llama.cpp's Q4_0); for target "
                  "'{target}' use quantize 'none' or 'int8'")


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (w_int8 * scale).T + b`` with w_int8 (out, in) int8 and scale (out,) in the activation dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # (out,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def int8_weight_only(model: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every nn.Linear replaced by Int8WeightOnlyLinear; returns (copy, count)."""
    qmodel = copy.deepcopy(model)
    count = 0
    for parent in list(qmodel.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8WeightOnlyLinear(child))
                count += 1
    if count == 0:
        raise ExportError("quantize='int8' found no nn.Linear layers in the model to quantize")
    return qmodel, count


def onnx_dynamic_int8(src: Path, dst: Path, *, external_data: bool) -> dict[str, int]:
    """onnxruntime dynamic quantization of ``src`` into ``dst``; returns the op counts that prove it happened."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=external_data)
    proto = onnx.load(str(dst), load_external_data=False)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "MatMul"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    if not ops.get("MatMulInteger"):
        raise ExportError(f"onnxruntime quantize_dynamic produced no MatMulInteger nodes in {dst.name} "
                          "(the graph has no MatMul with constant weights to quantize)")
    return ops


def fp8_requirements() -> list[str]:
    """What is missing for torchao FP8 here, in words; empty when FP8 can run."""
    missing = []
    if importlib.util.find_spec("torchao") is None:
        missing.append("the 'torchao' package (pip install torchao), which is not installed")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU with compute capability >= 8.9 (Ada/Hopper or newer); torch sees no CUDA device")
    elif torch.cuda.get_device_capability() < FP8_MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability()
        missing.append(f"a CUDA GPU with compute capability >= 8.9; this one ({torch.cuda.get_device_name()}) "
                       f"is {major}.{minor}")
    return missing


def fp8_weight_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the GPU with torchao float8 weight-only linear layers."""
    missing = fp8_requirements()
    if missing:
        raise MissingDependencyError("quantize='fp8'", missing)
    from torchao.quantization import Float8WeightOnlyConfig, quantize_

    qmodel = copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16)
    quantize_(qmodel, Float8WeightOnlyConfig())
    return qmodel
