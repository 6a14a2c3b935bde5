"""The Trainer: one optimizer step per ``step(batch)``, ``fit()`` for the whole run, checkpoints and callbacks.

``Trainer(model, cfg, dataloader)`` as in the seed. ``cfg`` may be a ``RunConfig`` (everything: train, dist, data
and viz sections), a ``TrainConfig`` (single process, no parallel strategy) or a ``ModelConfig`` (the seed passes
one: then the default ``TrainConfig()`` applies). The model is any ``nn.Module``: its ``loss(input_ids, labels,
...)`` is used when it has one (``model.lm.TransformerLM`` does, so fused linear+CE kernels apply), else
cross-entropy on ``model(input_ids)``'s logits. Strategies (DDP, FSDP2, ZeRO-1), activation checkpointing and
``torch.compile`` are applied from outside through ``dist.apply``.

Gradient accumulation: ``step(batch)`` is one optimizer step. The batch (this rank's share of the global batch) is
split along B into ``train.grad_accum`` micro-batches; each runs forward and backward (gradient sync only on the
last), weighted by its share of the batch's target tokens, so the update equals one step on the whole batch.

Host syncs: none per step in ``fit()``; losses, grad norms and NaN flags stay on the device and are read (``.item()``)
only on log steps. ``step()`` itself returns a Python float (one sync, as the seed's loop expects); ``step(batch,
sync=False)`` returns the 0-dim loss tensor instead. ``nan_policy='skip'`` needs one flag read per step to skip;
``'stop'`` records the first bad step on the device and raises at the next log step or checkpoint, before
anything non-finite is saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

import dist
from specs.batch import IGNORE_INDEX, Batch
from specs.config import DataConfig, DistConfig, ModelConfig, RunConfig, TrainConfig
from specs.errors import ConfigError, ShapeError
from train import adapters, checkpoint, init_from, objective
from train.callbacks import CallbackList, plugin_callbacks
from train.errors import TrainingError, TrainingInterrupted
from train.flops import flops_per_token, matmul_params, mfu, peak_flops
from train.loss import as_batch
from train.metadata import RunInfo
from train.optim import build_optimizer
from train.progress import Progress
from train.schedule import build_scheduler
from train.signals import StopSignals

logger = logging.getLogger("train")


def _split_config(cfg: Any) -> tuple[RunConfig | None, TrainConfig, DistConfig, DataConfig]:
    if isinstance(cfg, RunConfig):
        return cfg, cfg.train, cfg.dist, cfg.data
    if isinstance(cfg, TrainConfig):
        return None, cfg, DistConfig(), DataConfig()
    if isinstance(cfg, ModelConfig):
        return None, TrainConfig(), DistConfig(), DataConfig()
    raise ConfigError("cfg", f"expected a RunConfig, TrainConfig or ModelConfig, got {type(cfg).__name__}")


def resolve_precision(train: TrainConfig, dist_cfg: DistConfig) -> tuple[str, str]:
    """(precision, the field that chose it): ``dist.precision`` wins when set; both set differently is an error."""
    if dist_cfg.precision != "fp32" and train.precision not in ("fp32", dist_cfg.precision):
        raise ConfigError("dist.precision",
                          f"{dist_cfg.precision!r} conflicts with train.precision={train.precision!r}; set one of them")
    if dist_cfg.precision != "fp32":
        return dist_cfg.precision, "dist.precision"
    return train.precision, "train.precision"


class Trainer:
    """See the module docstring. ``callbacks`` are objects added after the ``train.callbacks`` plugins."""

    def __init__(self, model: nn.Module, cfg: RunConfig | TrainConfig | ModelConfig,
                 dataloader: Iterable[Any] | None = None, *, callbacks: Iterable[Any] = (),
                 eval_dataloader: Iterable[Any] | None = None, tokenizer: Any = None,
                 env: dist.DistEnv | None = None, manifest_dir: Any = None, command: list[str] | None = None):
        self.run_config, self.cfg, self.dist_cfg, data_cfg = _split_config(cfg)
        self.env = env or dist.current(self.cfg.device)
        device = self.env.device
        self.precision, field = resolve_precision(self.cfg, self.dist_cfg)
        self.dtype = dist.check_precision(self.precision, device, field)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.module = model
        if self.cfg.init_from is not None:  # fine-tuning: the saved model's weights (train.init_from)
            init_from.load_into(model, self.cfg.init_from)
        if self.cfg.lora is not None:  # LoRA adapters trained alone, the rest frozen (train.lora)
            adapters.apply(model, self.cfg.lora)
        self.dataloader, self.eval_dataloader, self.tokenizer = dataloader, eval_dataloader, tokenizer
        self.objective = objective.build(self.cfg)  # next-token cross-entropy, or train.preference's / grpo's plugin
        self._data_kind = objective.kind(self.objective)  # rows, pairs or prompts
        objective.check_loader(self.objective, dataloader)
        objective.check_loader(self.objective, eval_dataloader)
        self.vocab_size = _vocab_size(model)
        _check_data_vocab(self.vocab_size, dataloader, eval_dataloader, tokenizer)
        padded = not data_cfg.pack or self._data_kind != "rows"  # pairs and sampled rows are padded rows
        self._fields = ("positions",) + (("attention_mask",) if padded else ()) + \
            (("document_ids",) if data_cfg.doc_mask else ())
        self._matmul_params = matmul_params(model)
        self._peak = peak_flops(device)
        self.model = dist.apply(self.objective.module(model, train=self.cfg, device=device), self.dist_cfg, device,
                                grad_ckpt=self.cfg.grad_ckpt or self.dist_cfg.grad_ckpt, compile=self.cfg.compile,
                                precision=self.precision)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, self.cfg, device, self.dist_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        # FSDP's mixed-precision policy already computes in the low dtype; elsewhere autocast does it.
        self._autocast = self.precision != "fp32" and self.dist_cfg.strategy != "FSDP"
        names = self.cfg.callbacks
        self.callbacks = CallbackList([*plugin_callbacks(names), *callbacks], enabled=self.env.is_main)
        self.out_dir = self.cfg.out_dir
        self.run_name = self.run_config.name if self.run_config else "run"
        self.run_info = RunInfo.collect(run=self.run_name, config=self.config_dict(), model=self._model_info(),
                                        manifest_dir=manifest_dir, tokenizer=tokenizer,
                                        tokenizer_spec=data_cfg.tokenizer, command=command)
        self.global_step = self.tokens_seen = self.skipped_steps = 0
        self.last_metrics: dict[str, Any] = {}
        self.resumed_from: str | None = None
        self._last_saved = -1
        self._out_dir_claimed = False
        self._metric_every = {self.cfg.log_every} | ({self.run_config.viz.log_every} if self.run_config else set())
        self._reset_window()
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._progress: Progress | None = None
        self._eval_start: dict[int, Any] = {}
        self._warmed: set[tuple[bool, tuple[str, ...]]] = set()
        self.model.train()  # evaluate() switches back after itself

    # ---- bookkeeping ---------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return (self.run_config or self.cfg).to_dict()

    def _model_info(self) -> dict[str, Any]:
        cfg = getattr(self.module, "config", None)
        info: dict[str, Any] = {"class": type(self.module).__name__,
                                "params": sum(p.numel() for p in self.module.parameters())}
        if isinstance(cfg, ModelConfig):
            info.update(arch=cfg.arch, config=cfg.to_dict())
        return info

    def _reset_window(self) -> None:
        self._t0 = time.perf_counter()
        self._window_steps = self._window_tokens = 0
        self._loss_sum = None
        self._stats_sum: dict[str, torch.Tensor] = {}
        self._grad_norm: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.env.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's mixed precision as a context (bf16/fp16 autocast, or nothing): what the forward runs under,
        for work an objective does with the model besides it (an online objective's sampling)."""
        if not self._autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ---- one step ------------------------------------------------------------------------------------------------
    def step(self, batch: Any, *, sync: bool = True) -> float | torch.Tensor:
        """One optimizer step on ``batch`` (see the module docstring); returns the token-mean loss."""
        loss = self._advance(batch)
        if not sync:
            return loss
        value = self._reduce_mean(loss).item()
        if not math.isfinite(value) and self.cfg.nan_policy == "stop":
            self._raise_nonfinite(self.global_step, value)
        return value

    def _prepare(self, batch: Any) -> tuple[Batch, dict[str, torch.Tensor]]:
        """The training batch on the device: the loader's, or an online objective's from it (``prepare``: e.g. its
        sampled completions), with the statistics that made it."""
        stats: dict[str, torch.Tensor] = {}
        if callable(getattr(self.objective, "prepare", None)):
            batch, stats = self.objective.prepare(batch, self)
        b = as_batch(batch)
        _check_ids(b, self.vocab_size)
        return b.to(self.device, non_blocking=True), stats

    def _advance(self, batch: Any) -> torch.Tensor:
        return self._advance_prepared(*self._prepare(batch))

    def _advance_prepared(self, b: Batch, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, stats = self._forward_backward(b)
        stats.update(prepared)
        log_now = any((self.global_step + 1) % k == 0 for k in self._metric_every)
        self._optimizer_step(loss, log_now)
        self.global_step += 1
        tokens = b.num_tokens() * self.env.world_size
        self.tokens_seen += tokens
        self._window_steps += 1
        self._window_tokens += tokens
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        for k, v in stats.items():
            self._stats_sum[k] = self._stats_sum[k] + v if k in self._stats_sum else v
        metrics = self._collect_metrics(b.shape[1]) if log_now else {}
        self.callbacks.on_step(self, self.global_step, {k: v for k, v in metrics.items() if v is not None})
        if self._progress is not None:
            self._progress.update(self.global_step, metrics)
        if self.eval_dataloader is not None and self.cfg.eval_every and self.global_step % self.cfg.eval_every == 0:
            self.evaluate()
        if self.cfg.ckpt_every and self.global_step % self.cfg.ckpt_every == 0:
            self.save_checkpoint()
        return loss

    def _forward_backward(self, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's loss (the mean over the batch's units: target tokens, or pairs) after its backward, and the
        objective's statistics averaged the same way."""
        accum = self.cfg.grad_accum
        rows = b.shape[0]
        if rows % accum:
            raise ConfigError("train.grad_accum", f"a batch of {rows} rows does not split into {accum} micro-batches")
        if self._data_kind == "pairs" and not getattr(self.objective, "checks_groups", False) and (rows // accum) % 2:
            raise ConfigError("train.grad_accum", f"a batch of {rows} rows in {accum} micro-batches would split a "
                                                  "(chosen, rejected) pair; each micro-batch needs whole pairs")
        total = self.objective.units(b.labels).clamp(min=1).to(torch.float32)
        loss_sum = torch.zeros((), device=self.device)
        stats_sum: dict[str, torch.Tensor] = {}
        chunks = {k: v.chunk(accum) for k, v in self._inputs(b, self._names()).items()}
        for i in range(accum):
            mb = {k: v[i] for k, v in chunks.items()}
            with dist.gradient_sync(self.model, i == accum - 1):
                with self.autocast():
                    self._warm_compiled(mb)
                    loss, stats = _split_output(self.model(**mb))
                weight = self.objective.units(mb["labels"]) / total
                scaled = loss.float() * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += scaled.detach()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0) + v.detach().float() * weight
        return loss_sum, stats_sum

    def _warm_compiled(self, inputs: dict[str, torch.Tensor]) -> None:
        """Under ``train.compile``, the first forward of each (grad mode, batch fields) runs once eagerly first, so
        the model (whole, or each block under DDP/FSDP) compiles into one graph (``dist.eager_warmup`` says why)."""
        key = (torch.is_grad_enabled(), tuple(inputs))
        if self.cfg.compile and key not in self._warmed:
            self._warmed.add(key)
            # DDP's forward expects a backward before the next forward: warm the module inside it.
            dist.eager_warmup(dist.unwrap(self.model), device=self.device, **inputs)

    def _names(self) -> tuple[str, ...]:
        """The batch fields the objective's module takes."""
        return ("input_ids", "labels", *self._fields, *getattr(self.objective, "fields", ()))

    @staticmethod
    def _inputs(b: Batch, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The batch fields the model takes, under the model API's names (``attention_mask`` is ``attn_mask``)."""
        return {("attn_mask" if k == "attention_mask" else k): getattr(b, k)
                for k in names if getattr(b, k) is not None}

    def _optimizer_step(self, loss: torch.Tensor, log_now: bool) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = dist.clip_grad_norm_(self._params, self.cfg.grad_clip) if self.cfg.grad_clip > 0 else None
        if norm is None and log_now:
            norm = dist.grad_total_norm(self._params)
        self._grad_norm = norm
        bad = ~torch.isfinite(loss)
        if self.cfg.nan_policy == "skip":
            if norm is not None:
                bad = bad | ~torch.isfinite(norm)
            if self.env.initialized and self.env.world_size > 1:
                flag = bad.to(torch.int32)
                tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
                bad = flag.bool()
            if bool(bad.item()):  # the one sync 'skip' needs: the update must not run
                self.skipped_steps += 1
                logger.warning("step %d: non-finite loss or gradient, update skipped (%d so far)",
                               self.global_step + 1, self.skipped_steps)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.update()
                self.scheduler.step()
                return
        else:
            self._bad_step = torch.where((self._bad_step < 0) & bad, self.global_step + 1, self._bad_step)
        with dist.local_shards(self.optimizer):  # FSDP2: the step on local shards, without DTensor dispatch
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- metrics ---------------------------------------------------------------------------------------------------
    def _reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.env.initialized and self.env.world_size > 1:
            t = t.detach().clone()
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
            t = t / self.env.world_size
        return t

    def _check_finite(self) -> None:
        bad = int(self._bad_step.item())
        if bad >= 0:
            self._raise_nonfinite(bad, float("nan"))

    def _raise_nonfinite(self, step: int, value: float) -> None:
        raise TrainingError(f"loss became non-finite ({value}) at step {step}; stopping (train.nan_policy='stop'). "
                            "Lower train.lr, enable train.grad_clip, prefer bf16 over fp16, or set "
                            "train.nan_policy=skip to skip such steps")

    def _collect_metrics(self, seq_len: int) -> dict[str, Any]:
        loss = self._reduce_mean(self._loss_sum / self._window_steps).item()  # the sync of a log step
        if not math.isfinite(loss) and self.cfg.nan_policy == "stop":
            self._check_finite()
        dt = max(time.perf_counter() - self._t0, 1e-9)
        tokens_per_s = self._window_tokens / dt
        fpt = flops_per_token(self._matmul_params, *self._shape(), seq_len)
        stats = {k: self._reduce_mean(v / self._window_steps).item() for k, v in self._stats_sum.items()}
        metrics = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(self._grad_norm.item()) if self._grad_norm is not None else None,
            "tokens_per_s": tokens_per_s,
            "step_time_s": dt / self._window_steps,
            "mfu": mfu(fpt, tokens_per_s, self._peak, self.env.world_size),
            "tokens_seen": float(self.tokens_seen),
        }
        metrics.update(stats)
        if self.scaler is not None:
            metrics["loss_scale"] = float(self.scaler.get_scale())
        if self.skipped_steps:
            metrics["skipped_steps"] = float(self.skipped_steps)
        self.last_metrics = metrics
        self._reset_window()
        return metrics

    def _shape(self) -> tuple[int, int]:
        cfg = getattr(self.module, "config", None)
        if isinstance(cfg, ModelConfig):
            return cfg.n_layers, cfg.d_model
        return 0, 0  # unknown architecture: the attention term is left out

    # ---- evaluation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataloader: Iterable[Any] | None = None, max_batches: int | None = None) -> dict[str, float]:
        """Token-mean loss and perplexity over ``max_batches`` (default ``train.eval_steps``) batches of the
        eval loader, averaged over ranks; calls ``on_eval``."""
        loader = dataloader if dataloader is not None else self.eval_dataloader
        if loader is None:
            raise ConfigError("data.val_fraction",
                              "no evaluation data: set data.val_fraction > 0 or pass eval_dataloader")
        if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
            # Every evaluation reads the same batches: rewind a resumable loader to where the first one started.
            start = self._eval_start.setdefault(id(loader), loader.state_dict())
            loader.load_state_dict(start)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        stats_sum: dict[str, torch.Tensor] = {}
        batches: dict[str, int] = {}
        for i, batch in enumerate(loader):
            if i >= (max_batches or self.cfg.eval_steps):
                break
            b, prepared = self._prepare(batch)
            inputs = self._inputs(b, self._names())
            with self.autocast():
                self._warm_compiled(inputs)
                loss, stats = _split_output(self.model(**inputs))
            n = self.objective.units(b.labels)
            loss_sum += loss.double() * n
            count += n
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0) + v.double() * n
            for k, v in prepared.items():  # the batch's own statistics (an online objective's rewards), per batch
                stats_sum[k] = stats_sum.get(k, 0) + v.double()
                batches[k] = batches.get(k, 0) + 1
        names = sorted(stats_sum)
        both = torch.stack([loss_sum, count, *(stats_sum[k] for k in names)])
        world = self.env.world_size if self.env.initialized else 1
        if world > 1:
            tdist.all_reduce(both)
        loss_sum, count = both[0], both[1]
        if count.item() == 0:
            raise ConfigError("data.val_fraction", "the evaluation data has no target tokens; raise data.val_fraction")
        value = (loss_sum / count).item()
        metrics = {"loss": value}
        if self._data_kind == "rows":  # perplexity is the exp of a token-mean cross-entropy only
            metrics["ppl"] = math.exp(min(value, 700.0))
        metrics.update({k: (both[2 + i] / (batches[k] * world if k in batches else count)).item()
                        for i, k in enumerate(names)})
        if self._progress is not None:
            extra = f" | ppl {metrics['ppl']:.2f}" if "ppl" in metrics else "".join(
                f" | {k} {metrics[k]:.4f}" for k in names if k.startswith("rewards/"))
            self._progress.write(f"eval at step {self.global_step}: loss {value:.4f}{extra}")
        self.callbacks.on_eval(self, self.global_step, metrics)
        self.model.train()
        return metrics

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Write a checkpoint of the current step (every rank must call); keeps the last ``train.keep_last``."""
        self._check_finite()
        self._claim_out_dir()
        path = checkpoint.save(self, self.out_dir)
        if self.env.is_main:
            checkpoint.prune(self.out_dir, self.cfg.keep_last)
            if self._progress is not None:
                self._progress.write(f"checkpoint at step {self.global_step}: {path}")
            self.callbacks.on_checkpoint(self, str(path))
        self._last_saved = self.global_step
        return str(path)

    def _claim_out_dir(self) -> None:
        """Before this trainer's first step of ``fit`` or its first checkpoint: ``train.out_dir`` must be writable
        and, unless this run continues one of its checkpoints, hold none of an earlier run's (its step directories
        would be written over, and pruned as older). Decided on rank 0 and raised on every rank."""
        if self._out_dir_claimed:
            return
        problem = None
        if self.env.is_main:
            try:
                checkpoint.check_writable(self.out_dir)
                checkpoint.check_new_run(self.out_dir)
            except ConfigError as exc:
                problem = exc.message
        problem = dist.broadcast_json(self.env, problem)
        if problem is not None:
            raise ConfigError("train.out_dir", problem)
        self._out_dir_claimed = True

    def resume(self, spec: str = "auto") -> str | None:
        """Continue from ``spec`` ('auto': the newest checkpoint of ``train.out_dir``; or a path). Returns the path."""
        path = checkpoint.resolve_resume(spec, self.out_dir)
        if path is None:
            if self.env.is_main:
                logger.info("resume=auto: no checkpoint in %s yet, starting from step 0", self.out_dir)
            return None
        state = checkpoint.load(self, path)
        # continuing a checkpoint of this out_dir makes its checkpoints this run's own
        self._out_dir_claimed = Path(path).resolve().parent == checkpoint.checkpoints_root(self.out_dir).resolve()
        self.global_step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.resumed_from = str(path)
        self._last_saved = self.global_step
        if self.env.is_main:
            logger.info("resumed from %s at step %d", path, self.global_step)
        return str(path)

    # ---- the loop ----------------------------------------------------------------------------------------------------
    def fit(self, steps: int | None = None, *, progress_bar: bool | None = None) -> dict[str, Any]:
        """Train until step ``steps`` (default ``train.steps``), resuming first when ``train.resume`` is set;
        checkpoint at the end (unless ``train.ckpt_final`` is false). SIGTERM/Ctrl-C checkpoint and raise
        TrainingInterrupted. Returns the last metrics."""
        if self.dataloader is None:
            raise ConfigError("dataloader", "Trainer.fit needs a dataloader")
        if self.cfg.resume is not None and self.resumed_from is None:
            self.resume(self.cfg.resume)
        self._claim_out_dir()
        total = steps or self.cfg.steps
        self._progress = Progress(total, self.global_step, enabled=self.env.is_main, bar=progress_bar)
        self._reset_window()
        try:
            with StopSignals() as stop:
                batches = self._batches()
                # an online objective's ``iterations``: optimizer steps on each prepared batch (GRPO's mu); a run
                # resumed between them prepares a new batch at once
                reuse, held, left = max(1, int(getattr(self.objective, "iterations", 1))), None, 0
                while self.global_step < total:
                    if left == 0:
                        held, left = self._prepare(next(batches)), reuse
                    self._advance_prepared(*held)
                    left -= 1
                    if dist.any_rank(self.env, stop.requested is not None):
                        path = self.save_checkpoint()
                        raise TrainingInterrupted(stop.requested or 15, self.global_step, path)
                if self.cfg.ckpt_final and self._last_saved != self.global_step:
                    self.save_checkpoint()
                self._check_finite()
        finally:
            self._progress.close()
            self._progress = None
        self.callbacks.on_end(self)
        return self.last_metrics

    def _batches(self) -> Iterator[Any]:
        """The dataloader's batches, starting a new pass when a finite loader runs out."""
        while True:
            empty = True
            for batch in self.dataloader:
                empty = False
                yield batch
            if empty:
                raise ConfigError("data", "the dataloader yielded no batches")

    def close(self) -> None:
        """Call ``on_end`` for loops that drive ``step()`` themselves instead of ``fit()``."""
        self.callbacks.on_end(self)


def _split_output(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, stats) from an objective module's output: a loss tensor alone, or ``(loss, stats)``."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, {}


def _vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary (``model.config.vocab_size``, as lmstack and transformers models have), else None."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def _check_data_vocab(vocab: int | None, *sources: Any) -> None:
    """Data whose token ids can reach past the model's vocabulary fails here, not at the first batch that holds
    one: a tokenizer's ``vocab_size``, or a shard loader's (``loader.shards.vocab_size``)."""
    if vocab is None:
        return
    for src in sources:
        for what, holder in (("the tokenizer's", src), ("the dataloader's shards'", getattr(src, "shards", None))):
            size = getattr(holder, "vocab_size", None)
            if isinstance(size, int) and size > vocab:
                raise ConfigError("model.vocab_size", f"{vocab} is smaller than {what} vocabulary ({size} ids); "
                                                      f"build the model with vocab_size >= {size}")


def _check_ids(b: Batch, vocab: int | None) -> None:
    """Token ids in [0, vocab) and labels there or IGNORE_INDEX, checked while the batch is still on the CPU (no
    device sync): out of range, an id fails deep inside the embedding and a label is scored as another token."""
    if vocab is None:
        return
    for name, t in (("input_ids", b.input_ids), ("labels", b.labels)):
        if t is None or t.device.type != "cpu" or t.numel() == 0:
            continue
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ShapeError(f"batch {name}: expected integer token ids, got dtype {t.dtype}")
        bad = (t < 0) | (t >= vocab)
        if name == "labels":
            bad &= t != IGNORE_INDEX
        if bool(bad.any()):
            v = t[bad]
            raise ShapeError(f"batch {name}: ids must lie in [0, {vocab}) (the model's vocab_size)"
                             f"{' or be ' + str(IGNORE_INDEX) if name == 'labels' else ''}; got {int(v.min())}"
                             f"..{int(v.max())} ({int(bad.sum())} of {t.numel()})")

