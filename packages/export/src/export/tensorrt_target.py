"""TensorRT target: the validated ONNX decoder compiled into a serialized engine (``model.plan``).

The ONNX graph of :mod:`export.onnx_target` is parsed by TensorRT's ONNX parser into a strongly typed network
(precision follows the graph's dtype: fp32, or fp16 with ``dtype='fp16'``), with one optimization profile
covering batch 1..``MAX_BATCH``, new tokens 1..max_seq_len and past 0..max_seq_len-1. TF32 is switched off so
fp32 engines meet the same tolerance as onnxruntime. The engine is deserialized and run on the GPU through
``execute_async_v3`` with torch CUDA buffers, and compared with the PyTorch model like every other target.
Both model.onnx (portable) and model.plan (tied to this GPU and TensorRT version) are published.
Reference: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/python-api-docs.html
"""

from __future__ import annotations

import importlib
import shutil
from typing import Any

import torch

from export.decoder import DecoderSpec
from export.errors import ExportError, MissingDependencyError
from export.onnx_target import ARTIFACT, OrtRunner, check_opset, export_onnx
from export.targets import ExportJob, TargetResult, check_parity
from specs.errors import ConfigError

ENGINE = "model.plan"
MAX_BATCH = 8


def tensorrt_requirements() -> list[str]:
    """What is missing for the TensorRT target here, in words; empty when it can run."""
    missing = []
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install failing on its native libraries
        missing.append(f"the 'tensorrt' Python package (pip install tensorrt), which cannot be imported: {exc}")
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU; torch sees no CUDA device")
    return missing


def _profile_shapes(spec: DecoderSpec, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes for one input: opt is a single-token decode step over a half-full cache."""
    L = spec.max_seq_len
    if name in ("input_ids", "position_ids"):
        return (1, 1), (1, 1), (MAX_BATCH, L)
    if name == "attention_mask":
        return (1, 1), (1, L // 2 + 1), (MAX_BATCH, L)
    kv = (spec.kv_heads, spec.head_dim)
    return (1, kv[0], 0, kv[1]), (1, kv[0], L // 2, kv[1]), (MAX_BATCH, kv[0], L - 1, kv[1])


def build_engine(onnx_path: Any, spec: DecoderSpec) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name in spec.input_names:
        profile.set_shape(name, *_profile_shapes(spec, name))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError("TensorRT failed to build an engine from the ONNX decoder (see the TensorRT log above)")
    return bytes(engine)


class TrtRunner:
    """Run a serialized engine on the current CUDA device with torch buffers."""

    def __init__(self, engine_bytes: bytes, spec: DecoderSpec):
        import tensorrt as trt

        self.trt, self.spec = trt, spec
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ExportError("TensorRT could not deserialize the engine it just built")
        self.context = self.engine.create_execution_context()

    def _dtype(self, name: str) -> torch.dtype:
        trt = self.trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
                 trt.int32: torch.int32, trt.bfloat16: torch.bfloat16}
        return table[self.engine.get_tensor_dtype(name)]

    @torch.no_grad()
    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = [t.to("cuda", self._dtype(n)).contiguous() for n, t in zip(self.spec.input_names, tensors)]
        for name, t in zip(self.spec.input_names, inputs):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self.spec.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        return [o.cpu() for o in outputs]


class TensorRTTarget:
    """``target='tensorrt'``: model.onnx validated on onnxruntime, then model.plan validated on the GPU."""

    name = "tensorrt"

    def check(self, cfg: Any) -> None:
        check_opset(cfg.opset)
        if cfg.quantize != "none":
            raise ConfigError("export.quantize", f"{cfg.quantize!r} is not supported for target 'tensorrt' (int8 "
                              "and fp8 engines need calibration data); use quantize 'none' with dtype fp32 or fp16")
        if cfg.dtype == "bf16":
            raise ConfigError("export.dtype", "use 'fp32' or 'fp16' for target 'tensorrt'")
        if missing := tensorrt_requirements():
            raise MissingDependencyError("target='tensorrt'", missing)

    def build(self, job: ExportJob) -> TargetResult:
        import tensorrt as trt

        files = export_onnx(job.model, job.spec, job.scratch / ARTIFACT, opset=job.config.opset,
                            external_data_threshold=job.external_data_threshold)
        meta: dict[str, Any] = {"format": "onnx + TensorRT engine", "opset": job.config.opset,
                                "tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(),
                                "profile": {n: _profile_shapes(job.spec, n) for n in job.spec.input_names}}
        if job.config.validate:
            meta["parity_onnx"] = check_parity(job, job.model, OrtRunner(job.scratch / ARTIFACT, job.spec),
                                               "the ONNX graph")
        engine = build_engine(job.scratch / ARTIFACT, job.spec)
        (job.workdir / ENGINE).write_bytes(engine)
        if job.config.validate:
            meta["parity"] = check_parity(job, job.model, TrtRunner(engine, job.spec), "the TensorRT engine")
        for f in files:
            shutil.move(job.scratch / f, job.workdir / f)
        return TargetResult(files=[ENGINE, *files], metadata=meta)
