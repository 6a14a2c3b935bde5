"""``export(model, ExportConfig(...), vocab_size=..., d_model=...)``: the seed's one-call deployable artifact.

    from export.exporter import export
    from specs.export import ExportConfig
    out = export(model, ExportConfig(target="onnx", opset=19, quantize="int8", dynamic_axes=True,
                                     outdir="artifacts/"), vocab_size=32000, d_model=cfg.d_model)
    print("artifact:", out)  # artifacts/model.onnx + modelcard.json

Steps: check the inputs (config, the LanguageModel protocol, the dims the caller expects, the target's toolchain,
the hook names) before any work; build the target's artifact in a staging directory beside ``outdir``; reload it
with its own runtime and compare it with the PyTorch model (:mod:`export.targets`); write ``modelcard.json``;
publish atomically (:mod:`export.publish`); then call the post-export hooks. The target comes from the
``lmstack.exporters`` entry-point group, so a third-party package can add one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.card import build_card, hook_metadata
from export.decoder import TORCH_DTYPES, DecoderSpec
from export.hooks import Hook, run_hooks, select_hooks
from export.onnx_target import EXTERNAL_DATA_THRESHOLD
from export.publish import CARD, discard, make_staging, publish
from export.targets import ExportJob
from export.validate import model_device, sample_tokens
from specs.config import ExportConfig
from specs.errors import ConfigError
from specs.modelcard import LineageEntry, ModelCard, sha256_file
from specs.plugins import resolve
from specs.protocols import LanguageModel

REQUIRED_CONFIG = ("n_layers", "n_heads", "d_model", "vocab_size", "max_seq_len")


@dataclass(frozen=True)
class ExportResult:
    """What was published. ``str(result)`` and ``os.fspath(result)`` are the main artifact's path."""

    path: Path
    outdir: Path
    files: tuple[Path, ...]
    card: ModelCard
    hooks: tuple[str, ...] = ()

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


def check_model(model: Any) -> None:
    """ConfigError unless ``model`` is an nn.Module satisfying specs.protocols.LanguageModel with usable dims."""
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"expected a torch.nn.Module satisfying specs.protocols.LanguageModel, got "
                          f"{type(model).__name__}")
    if not isinstance(model, LanguageModel):
        missing = [a for a in ("config", "new_cache") if not hasattr(model, a)]
        raise ConfigError("model", f"{type(model).__name__} does not satisfy specs.protocols.LanguageModel: missing "
                          f"{', '.join(repr(m) for m in missing)} (expected forward(input_ids, positions=None, "
                          "cache=None, attn_mask=None), .config and .new_cache(batch_size, max_seq_len))")
    lacking = [f for f in REQUIRED_CONFIG if not isinstance(getattr(model.config, f, None), int)]
    if lacking:
        raise ConfigError("model.config", f"missing integer fields {lacking}; expected a specs ModelConfig")


def check_dims(config: Any, vocab_size: int | None, d_model: int | None) -> None:
    for field, want in (("vocab_size", vocab_size), ("d_model", d_model)):
        if want is not None and getattr(config, field) != want:
            raise ConfigError(field, f"export was called with {field}={want} but the model has "
                              f"{field}={getattr(config, field)} (model.config.{field})")


def check_eval_tokens(config: Any, eval_tokens: Any, eval_length: Any) -> None:
    """ConfigError unless quantization's perplexity sequence can be scored: ``eval_length`` an int >= 2, and
    ``eval_tokens`` (when given) an integer (1, L) tensor with 2 <= L <= max_seq_len and ids in [0, vocab_size)."""
    if isinstance(eval_length, bool) or not isinstance(eval_length, int) or eval_length < 2:
        raise ConfigError("eval_length", f"expected an int >= 2 (tokens in the sequence that measures quantization's "
                          f"perplexity change; fewer predict nothing and give a NaN perplexity), got {eval_length!r}")
    if eval_tokens is None:
        return
    if not isinstance(eval_tokens, torch.Tensor):
        raise ConfigError("eval_tokens", f"expected a (1, L) tensor of token ids, got {type(eval_tokens).__name__}")
    if eval_tokens.is_floating_point() or eval_tokens.is_complex() or eval_tokens.dtype == torch.bool:
        raise ConfigError("eval_tokens", f"expected integer token ids, got dtype {eval_tokens.dtype}")
    max_len, vocab = config.max_seq_len, config.vocab_size
    if eval_tokens.dim() != 2 or eval_tokens.shape[0] != 1 or not 2 <= eval_tokens.shape[1] <= max_len:
        raise ConfigError("eval_tokens", f"expected shape (1, L) with 2 <= L <= {max_len} (model.config.max_seq_len), "
                          f"got {tuple(eval_tokens.shape)}")
    lo, hi = int(eval_tokens.min()), int(eval_tokens.max())
    if lo < 0 or hi >= vocab:
        raise ConfigError("eval_tokens", f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab}) "
                          "(model.config.vocab_size)")


def _as_config(cfg: ExportConfig | Mapping[str, Any]) -> ExportConfig:
    if isinstance(cfg, Mapping):
        return ExportConfig.from_dict(cfg, path="export")
    if not isinstance(cfg, ExportConfig):
        raise ConfigError("export", f"expected a specs.export.ExportConfig, got {type(cfg).__name__}")
    return cfg


def _lineage(source: str | os.PathLike[str] | None) -> tuple[LineageEntry, ...]:
    if source is None:
        return ()
    src = Path(source)
    card = src / CARD
    weights = src / "model.safetensors"
    digest = sha256_file(card) if card.is_file() else sha256_file(weights) if weights.is_file() else None
    return (LineageEntry(kind="checkpoint", name=src.name or str(src), sha256=digest, uri=str(src.resolve())),)


def export(model: nn.Module, cfg: ExportConfig | Mapping[str, Any], *, vocab_size: int | None = None,
           d_model: int | None = None, name: str | None = None, source: str | os.PathLike[str] | None = None,
           metadata: Mapping[str, Any] | None = None, extra_hooks: Mapping[str, Hook] | None = None,
           atol: float = 1e-4, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
           eval_tokens: torch.Tensor | None = None, eval_length: int = 64, seed: int = 0) -> ExportResult:
    """Export ``model`` as ``cfg`` says, validate it, write modelcard.json, publish into ``cfg.outdir``.

    ``vocab_size``/``d_model``: what the caller expects the model to have (checked). ``source``: the checkpoint
    directory it was loaded from (recorded as lineage). ``metadata``: training metadata (specs.metadata) passed on to
    hooks. ``extra_hooks``: in-process hooks by name, beside the installed ones. ``atol``: max |logit diff| allowed
    between artifact and model in fp32. ``external_data_threshold``: weight bytes from which ONNX weights go to
    ``model.onnx.data``. ``eval_tokens`` (1, L) integer ids, 2 <= L <= max_seq_len: the fixed sequence for
    quantization's perplexity change (default: ``eval_length`` >= 2 tokens, at most max_seq_len, sampled from the
    model with ``seed``). Returns an :class:`ExportResult`.
    """
    cfg = _as_config(cfg)
    if not atol >= 0:  # NaN fails too
        raise ConfigError("atol", f"expected a tolerance >= 0 (max |logit diff|), got {atol}")
    check_model(model)
    check_dims(model.config, vocab_size, d_model)
    check_eval_tokens(model.config, eval_tokens, eval_length)
    if not cfg.dynamic_axes:
        raise ConfigError("export.dynamic_axes", "static-shape export is not supported: the decoder graph needs "
                          "dynamic batch, sequence and past axes; set dynamic_axes=true")
    target = resolve("lmstack.exporters", cfg.target)()
    target.check(cfg)
    hooks = select_hooks(cfg.hooks, extra_hooks)
    outdir = Path(cfg.outdir).absolute()
    staging = make_staging(outdir)
    was_training = model.training
    try:
        model.eval()
        work = model
        dtype = TORCH_DTYPES[cfg.dtype]
        if model_device(model).type != "cpu" or any(p.dtype != dtype for p in model.parameters()):
            work = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
        spec = DecoderSpec.from_config(model.config, with_cache=cfg.with_cache, dtype=dtype)
        with torch.no_grad():  # one eager forward first: lazily built tables (RoPE, ALiBi) must be real tensors,
            work(torch.zeros(1, 2, dtype=torch.long))  # not tracer placeholders memoised during the trace
        if eval_tokens is None and cfg.quantize != "none":
            eval_tokens = sample_tokens(work, spec, min(eval_length, spec.max_seq_len), seed=seed)
        scratch = staging / ".work"
        scratch.mkdir()
        job = ExportJob(model=work, config=cfg, spec=spec, workdir=staging, scratch=scratch, atol=atol,
                        external_data_threshold=external_data_threshold,
                        eval_tokens=eval_tokens if eval_tokens is not None else torch.zeros(1, 0, dtype=torch.long),
                        seed=seed, source=Path(source) if source is not None else None)
        result = target.build(job)
        arch = getattr(model.config, "arch", type(model).__name__)
        card = build_card(name=name or (Path(source).name if source else f"{arch}-{cfg.target}"), workdir=staging,
                          files=result.files, model_config=model.config, export_config=cfg,
                          io=spec.io_description(), target_meta=result.metadata, lineage=_lineage(source),
                          params=sum(p.numel() for p in model.parameters()))
        (staging / CARD).write_text(card.to_json(), encoding="utf-8")
        published = publish(staging, outdir, result.files)
    except BaseException:
        discard(staging)
        raise
    finally:
        model.train(was_training)
    ran = run_hooks(hooks, outdir, published, hook_metadata(card, outdir, published, arch=arch, base=metadata))
    given = Path(cfg.outdir)  # report paths the way the caller spelled outdir ("artifacts/model.onnx")
    return ExportResult(path=given / published[0].name, outdir=given, files=tuple(given / p.name for p in published),
                        card=card, hooks=tuple(ran))
