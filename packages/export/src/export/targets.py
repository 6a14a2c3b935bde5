"""What an export target is, and the validation every target runs on what it wrote.

A target (registered in the ``lmstack.exporters`` entry-point group) is a class with a ``name``, a ``check(cfg)``
that rejects unsupported settings or a missing toolchain *before* any work, and a ``build(job)`` that writes its
artifact files into ``job.workdir``, reloads them through the target's own runtime and validates them with
:func:`check_parity` (and :func:`quantization_figures` when quantized). The exporter then writes the model card and
publishes the directory atomically (:mod:`export.publish`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from export.decoder import DecoderSpec
from export.errors import ExportError, ParityError
from export.validate import Runner, decode_parity, quality_report, random_past_parity

# Parity tolerance (max |logit diff|) used when the artifact's dtype is lower precision than fp32.
HALF_ATOL = {torch.float16: 2e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True, kw_only=True)
class ExportJob:
    """Everything a target needs. ``model`` is in eval mode and already in the export dtype."""

    model: nn.Module
    config: Any  # specs.config.ExportConfig
    spec: DecoderSpec
    workdir: Path  # artifacts go here (the staging directory)
    scratch: Path  # temporary files, removed before publishing
    atol: float
    external_data_threshold: int
    eval_tokens: torch.Tensor  # (1, L) fixed sequence for perplexity
    seed: int = 0
    source: Path | None = None  # the checkpoint directory the model came from (its tokenizer), when known

    @property
    def tolerance(self) -> float:
        return max(self.atol, HALF_ATOL.get(self.spec.dtype, 0.0))


@dataclass
class TargetResult:
    files: list[str]  # relative to job.workdir, the artifact first
    metadata: dict[str, Any] = field(default_factory=dict)


class Target(Protocol):
    name: str

    def check(self, cfg: Any) -> None: ...

    def build(self, job: ExportJob) -> TargetResult: ...


def explain_trace_failure(kind: str, exc: BaseException) -> ExportError:
    """An ExportError for a failed trace: the exporter's first lines plus what usually causes it."""
    text = f"{type(exc).__name__}: {exc}"
    first = "\n".join(text.strip().splitlines()[:8])
    hint = ""
    if "data-dependent" in text or "DataDependent" in text:
        hint = ("\nHint: the model's forward reads tensor values into Python (e.g. cache.seq_lens.tolist() or "
                "int(x.max())), which no tracer can follow with dynamic axes. Export's PastKVCache declares "
                "`fixed_shape` (specs KVCache protocol): models should then mask with seq_lens as a tensor.")
    elif "Constraints violated" in text or "specialized" in text.lower():
        hint = ("\nHint: the model's forward turns a dynamic size into a Python int or branches on it (int(size), "
                "`if T > 1`, a range check raised from Python), which fixes the batch/sequence/past axes.")
    return ExportError(f"{kind} failed for this model: {first}{hint}")


def check_parity(job: ExportJob, model: nn.Module, runner: Runner, what: str) -> dict[str, Any]:
    """Artifact vs ``model``: cached decode and random-past checks; ParityError past the tolerance."""
    try:
        decode = decode_parity(model, runner, job.spec, seed=job.seed)
        past = random_past_parity(model, runner, job.spec, seed=job.seed + 1)
    except ExportError:
        raise
    except Exception as exc:  # the artifact cannot run at shapes other than the tracing example
        first = "\n".join(f"{type(exc).__name__}: {exc}".strip().splitlines()[:6])
        raise ExportError(f"{what} fails to run on fresh inputs of other shapes (the trace probably baked a dynamic "
                          f"size into a constant): {first}") from exc
    worst = max(decode["max_abs_diff"], past["max_abs_diff"], past["present_max_abs_diff"])
    report = {"reference": "PyTorch model, its own KV cache", "atol": job.tolerance, "max_abs_diff": worst,
              "decode": decode, "random_past": past, "passed": bool(worst <= job.tolerance and decode["finite"])}
    if not report["passed"]:
        raise ParityError(f"{what} disagrees with the PyTorch model: max |logit diff| {worst:.3g} > atol "
                          f"{job.tolerance:g} (prefill {decode['prefill_max_abs_diff']:.3g}, decode "
                          f"{decode['decode_max_abs_diff']:.3g}, random past {past['max_abs_diff']:.3g}, presents "
                          f"{past['present_max_abs_diff']:.3g}); nothing was written to {job.config.outdir}")
    return report


def quantization_figures(job: ExportJob, runner: Runner, scheme: str, **extra: Any) -> dict[str, Any]:
    """What quantization cost against the unquantized PyTorch model: logit change, perplexity, greedy agreement."""
    decode = decode_parity(job.model, runner, job.spec, seed=job.seed)
    if not decode["finite"]:
        raise ParityError(f"the {scheme} artifact produced non-finite logits; nothing was written")
    quality = quality_report(job.model, job.spec, runner, job.eval_tokens, seed=job.seed)
    return {"scheme": scheme, "reference": "unquantized PyTorch model",
            "logit_max_abs_change": decode["max_abs_diff"], "logit_mean_abs_change": decode["mean_abs_diff"],
            "logit_rel_change": decode["mean_abs_diff"] / max(decode["ref_logit_std"], 1e-12),
            **quality, **extra}


def file_sizes(workdir: Path, files: list[str]) -> int:
    return sum((workdir / f).stat().st_size for f in files)
