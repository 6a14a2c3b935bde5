"""lmstack compression: quantization applied to a model from outside (gpt-fast's quantize.py, torchao's quantize_)."""

from compress.quant import Int8WeightOnlyLinear, int8_weight_only_, quantize_

__version__ = "0.5.0"
__all__ = ["Int8WeightOnlyLinear", "int8_weight_only_", "quantize_"]
