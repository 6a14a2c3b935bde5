"""lmstack export: ONNX (decoder with KV cache), torch.export and TorchScript artifacts, int8/FP8 quantization and
TensorRT engines, each validated against the PyTorch model and described by a hashed ``modelcard.json``."""

from export.errors import ExportError, HookError, MissingDependencyError, ParityError
from export.exporter import ExportResult, export

__version__ = "0.4.0"
__all__ = ["ExportError", "ExportResult", "HookError", "MissingDependencyError", "ParityError", "export"]
