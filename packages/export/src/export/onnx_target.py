"""ONNX target: a decoder-with-past graph from torch.onnx's dynamo exporter, checked and run by onnxruntime.

The graph follows the Hugging Face Optimum / onnxruntime-genai convention (:mod:`export.decoder`). It is exported
with ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript; the TorchScript-based exporter has no
``aten::rms_norm`` symbolic, so it cannot export Llama-style models), weights go to ``model.onnx.data`` when the
protobuf would pass its 2 GB limit, and the file is checked by ``onnx.checker`` (full check) before onnxruntime
compares it with the PyTorch model. ``quantize='int8'`` ships onnxruntime's dynamic int8 quantization of the
validated fp32 graph. Reference: https://onnx.ai/onnx/repo-docs/ExternalData.html
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from export.decoder import BATCH, PAST, SEQ, TOTAL, DecoderSpec, DecoderWithPast
from export.errors import ExportError
from export.quantize import INT4_ONLY_GGUF, onnx_dynamic_int8
from export.targets import (
    ExportJob,
    TargetResult,
    check_parity,
    explain_trace_failure,
    file_sizes,
    quantization_figures,
)
from specs.errors import ConfigError

ARTIFACT = "model.onnx"
MIN_OPSET, MAX_OPSET = 18, 23  # what torch.onnx's dynamo exporter writes (it silently raises lower requests to 18)
PROTO_LIMIT = 2**31  # protobuf's hard limit on one serialized message
# Weights past this go to external data; the margin leaves room for the graph itself.
EXTERNAL_DATA_THRESHOLD = PROTO_LIMIT - 2**26


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError("export.opset", f"opset {opset} is not supported: torch.onnx's exporter writes opsets "
                          f"{MIN_OPSET}..{MAX_OPSET}; choose one in that range (19 is the default)")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct tensors (a tied embedding/head counts once, as the ONNX file stores it once)."""
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        seen[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def export_onnx(model: torch.nn.Module, spec: DecoderSpec, path: Path, *, opset: int,
                external_data_threshold: int) -> list[str]:
    """Write ``path`` (and ``path.data`` for large models); return the file names written, the graph first."""
    wrapper = DecoderWithPast(model, spec).eval()
    example = spec.example_inputs()
    external = weight_bytes(model) >= external_data_threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
            warnings.simplefilter("ignore")
            # torch.export first, so a model that cannot keep the axes dynamic fails here with torch.export's own
            # message instead of torch.onnx's silent fallback to a specialised (fixed-shape) graph.
            program = torch.export.export(wrapper, example, dynamic_shapes=spec.dynamic_shapes())
    except Exception as exc:
        raise explain_trace_failure("torch.export (step 1 of the ONNX export)", exc) from exc
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=spec.input_names,
                                             output_names=spec.output_names, optimize=True, verbose=False,
                                             dynamic_shapes=spec.dynamic_shapes())
            onnx_program.save(str(path), external_data=external)
    except Exception as exc:
        raise explain_trace_failure("torch.onnx.export", exc) from exc
    files = [path.name] + ([path.name + ".data"] if (path.parent / (path.name + ".data")).exists() else [])
    check_onnx(path, spec, opset=opset)
    return files


def check_onnx(path: Path, spec: DecoderSpec, *, opset: int | None = None) -> None:
    """onnx.checker (full, by path so external data works), then opset and input/output names."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from None
    proto = onnx.load(str(path), load_external_data=False)
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got_opset != opset:
        raise ExportError(f"{path.name} has opset {got_opset}, expected {opset}")
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if ins != spec.input_names or outs != spec.output_names:
        raise ExportError(f"{path.name} has inputs {ins} and outputs {outs}; expected {spec.input_names} -> "
                          f"{spec.output_names}")
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        dynamic = (0, 2) if value.name.startswith(("past_key_values.", "present.")) else (0, 1)
        fixed = [i for i in dynamic if not dims[i].dim_param]
        if fixed:
            raise ExportError(f"{path.name}: {value.name} has fixed size(s) {[dims[i].dim_value for i in fixed]} on "
                              f"axes {fixed}, which must stay dynamic (batch, sequence, past)")


def dim_names(path: Path) -> dict[str, list[str | int]]:
    """Each graph input's and output's shape, symbolic dims by name."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}


class OrtRunner:
    """Run an ONNX decoder with onnxruntime's CPU provider: tensors in spec order in, tensors out."""

    def __init__(self, path: Path, spec: DecoderSpec, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=list(providers))
        self.spec = spec

    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(self.spec.input_names, tensors)}
        return [torch.from_numpy(o) for o in self.session.run(self.spec.output_names, feed)]


def _move(files: list[str], src: Path, dst: Path) -> None:
    for f in files:
        shutil.move(src / f, dst / f)


class OnnxTarget:
    """``target='onnx'``: model.onnx (+ model.onnx.data), fp32/fp16, optionally onnxruntime int8."""

    name = "onnx"

    def check(self, cfg: Any) -> None:
        check_opset(cfg.opset)
        if cfg.quantize == "int4":
            raise ConfigError("export.quantize", INT4_ONLY_GGUF.format(target="onnx"))
        if cfg.quantize == "fp8":
            raise ConfigError("export.quantize", "fp8 is available for target 'torch_export' (torchao on a GPU); "
                              "for target 'onnx' use 'none' or 'int8'")
        if cfg.dtype == "bf16":
            raise ConfigError("export.dtype", "onnxruntime's CPU provider has no bf16 kernels for these ops; use "
                              "'fp32' or 'fp16' for target 'onnx'")
        if cfg.quantize == "int8" and cfg.dtype != "fp32":
            raise ConfigError("export.dtype", f"int8 quantization starts from the fp32 graph; got dtype {cfg.dtype!r}")

    def build(self, job: ExportJob) -> TargetResult:
        cfg = job.config
        fp_dir = job.scratch / "fp"
        fp_files = files = export_onnx(job.model, job.spec, fp_dir / ARTIFACT, opset=cfg.opset,
                            external_data_threshold=job.external_data_threshold)
        meta: dict[str, Any] = {"format": "onnx", "opset": cfg.opset, "exporter": f"torch.onnx dynamo (torch "
                                f"{torch.__version__})", "external_data": len(files) > 1,
                                "dims": dim_names(fp_dir / ARTIFACT), "dynamic_axes": [BATCH, SEQ, PAST, TOTAL]}
        if cfg.validate:
            meta["parity"] = check_parity(job, job.model, OrtRunner(fp_dir / ARTIFACT, job.spec), "the ONNX graph")
        if cfg.quantize == "int8":
            q_dir = job.scratch / "int8"
            q_dir.mkdir()
            ops = onnx_dynamic_int8(fp_dir / ARTIFACT, q_dir / ARTIFACT, external_data=len(fp_files) > 1)
            check_onnx(q_dir / ARTIFACT, job.spec)
            files = [ARTIFACT] + ([ARTIFACT + ".data"] if (q_dir / (ARTIFACT + ".data")).exists() else [])
            meta["quantization"] = quantization_figures(
                job, OrtRunner(q_dir / ARTIFACT, job.spec), "onnxruntime dynamic int8 (quantize_dynamic, "
                "QInt8 per-channel weights)", ops=ops, bytes_fp32=file_sizes(fp_dir, fp_files),
                bytes_int8=file_sizes(q_dir, files))
            _move(files, q_dir, job.workdir)
        else:
            _move(files, fp_dir, job.workdir)
        return TargetResult(files=files, metadata=meta)
