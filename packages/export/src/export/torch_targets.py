"""torch.export (``model.pt2``) and TorchScript (``model.pt``) targets of the decoder-with-past wrapper.

Both trace :class:`~export.decoder.DecoderWithPast`, so the artifacts take and return the same named tensors as
the ONNX graph (in positional order: input_ids, attention_mask, position_ids, past k/v per layer). The
ExportedProgram carries dynamic batch, sequence and past dims (``torch.export.Dim``) and is saved with
``torch.export.save``; TorchScript uses ``torch.jit.trace`` (shapes are recorded as graph ops, so it generalises
over B, T and S, which validation checks at several shapes). Each artifact is reloaded (``torch.export.load`` /
``torch.jit.load``) and compared with the model it came from. ``quantize='int8'`` exports the int8 weight-only copy
of :mod:`export.quantize`; ``'fp8'`` (torch_export only) the torchao float8 copy on the GPU.
References: https://pytorch.org/docs/stable/export.html, https://pytorch.org/docs/stable/jit.html
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from export.decoder import DecoderWithPast
from export.errors import MissingDependencyError
from export.quantize import INT4_ONLY_GGUF, fp8_requirements, fp8_weight_only, int8_weight_only
from export.targets import ExportJob, TargetResult, check_parity, explain_trace_failure, quantization_figures
from export.validate import model_device
from specs.errors import ConfigError


class ModuleRunner:
    """Call a reloaded module with tensors on its device; return CPU tensors.

    TorchScript modules run with the JIT's optimizing executor off: it re-profiles and recompiles for every new
    input shape, which makes a validation sweep over shapes slow without changing a single result.
    """

    def __init__(self, module: Any, device: torch.device):
        self.module, self.device = module, device
        self.scripted = isinstance(module, torch.jit.ScriptModule)

    @torch.no_grad()
    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.jit.optimized_execution(not self.scripted):
            out = self.module(*(t.to(self.device) for t in tensors))
        return [o.cpu() for o in out]


def _quantized(job: ExportJob) -> tuple[nn.Module, dict[str, Any]]:
    """The model to export (a quantized copy, or the model itself) and a description of the scheme."""
    q = job.config.quantize
    if q == "int8":
        model, n = int8_weight_only(job.model)
        return model, {"scheme": "int8 weight-only, per-output-channel symmetric scales", "linear_layers": n}
    if q == "fp8":
        return fp8_weight_only(job.model), {"scheme": "torchao Float8WeightOnlyConfig (e4m3 weights), CUDA"}
    return job.model, {}


def _build(job: ExportJob, filename: str, kind: str) -> TargetResult:
    model, scheme = _quantized(job)
    device = model_device(model)
    if device.type != "cpu":  # lazily built tables for this device must exist before tracing (see exporter)
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device=device))
    wrapper = DecoderWithPast(model, job.spec).eval()
    example = tuple(t.to(device) for t in job.spec.example_inputs())
    path = job.workdir / filename
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if kind == "torch_export":
                program = torch.export.export(wrapper, example, dynamic_shapes=job.spec.dynamic_shapes())
                torch.export.save(program, path)
                loaded = torch.export.load(path).module()
            else:
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                torch.jit.save(traced, str(path))
                loaded = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise explain_trace_failure(kind, exc) from exc
    runner = ModuleRunner(loaded, device)
    meta: dict[str, Any] = {"format": "pt2 (torch.export.save)" if kind == "torch_export" else "TorchScript",
                            "exporter": f"{kind} (torch {torch.__version__})"}
    if job.config.validate:
        meta["parity"] = check_parity(job, model, runner, f"the reloaded {filename}")
    if scheme:
        meta["quantization"] = quantization_figures(job, runner, scheme.pop("scheme"), **scheme,
                                                    bytes_artifact=path.stat().st_size)
    return TargetResult(files=[filename], metadata=meta)


class TorchExportTarget:
    """``target='torch_export'``: an ExportedProgram with dynamic shapes, saved as model.pt2."""

    name = "torch_export"

    def check(self, cfg: Any) -> None:
        if cfg.quantize == "int4":
            raise ConfigError("export.quantize", INT4_ONLY_GGUF.format(target=self.name))
        if cfg.quantize == "fp8" and cfg.dtype != "bf16":
            raise ConfigError("export.dtype", f"quantize='fp8' runs the model in bf16 (torchao float8 weights, bf16 "
                              f"activations and KV cache); set dtype='bf16', got {cfg.dtype!r}")
        if cfg.quantize == "fp8" and (missing := fp8_requirements()):
            raise MissingDependencyError("quantize='fp8'", missing)

    def build(self, job: ExportJob) -> TargetResult:
        return _build(job, "model.pt2", "torch_export")


class TorchScriptTarget:
    """``target='torchscript'``: a torch.jit.trace of the decoder, saved as model.pt."""

    name = "torchscript"

    def check(self, cfg: Any) -> None:
        if cfg.quantize == "int4":
            raise ConfigError("export.quantize", INT4_ONLY_GGUF.format(target=self.name))
        if cfg.quantize == "fp8":
            raise ConfigError("export.quantize", "fp8 uses torchao tensor subclasses that TorchScript cannot trace; "
                              "use target 'torch_export' for fp8, or quantize 'none' / 'int8'")

    def build(self, job: ExportJob) -> TargetResult:
        return _build(job, "model.pt", "torchscript")
