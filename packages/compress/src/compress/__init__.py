"""lmstack compression: quantization and LoRA adapters applied to a model from outside (gpt-fast's quantize.py,
torchao's quantize_, PEFT's LoRA)."""

from compress.lora import (
                           LoRALinear,
                           adapters_disabled,
                           apply_lora,
                           load_adapter,
                           merge_lora,
                           merged_state_dict,
                           save_adapter,
)
from compress.multi_lora import AdapterWeights, MultiLoRA, MultiLoRALinear, read_adapter
from compress.nf4 import NF4Linear, nf4_
from compress.quant import Int8WeightOnlyLinear, int8_weight_only_, quantize_

__version__ = "0.11.0"
__all__ = ["AdapterWeights", "Int8WeightOnlyLinear", "LoRALinear", "MultiLoRA", "MultiLoRALinear", "NF4Linear",
           "adapters_disabled",
           "apply_lora", "int8_weight_only_", "load_adapter", "merge_lora", "merged_state_dict", "nf4_", "quantize_",
           "read_adapter", "save_adapter"]
