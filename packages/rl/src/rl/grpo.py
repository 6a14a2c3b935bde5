"""GRPO (Shao et al. 2024, arXiv:2402.03300): online RL on prompts with group-relative advantages, as TRL's
GRPOTrainer computes it, run by the Trainer (``train.grpo``; the ``lmstack.objectives`` plugin ``grpo``).

Each step, for this rank's prompts (``data.dataset: prompts``, :func:`build_prompt_dataloader`):

1. the policy samples ``num_generations`` completions of every prompt, with a generator seeded by the run's seed,
   the step and the rank, so a resumed run samples what the uninterrupted one did: ``sampler: generate`` with the
   policy itself (the ``lmstack.generators`` plugin, serve's ``generate``; eval mode, the run's precision);
   ``paged`` with a copy of it in the run's precision (the ``lmstack.samplers`` plugin, serve's ``PolicySampler``:
   the continuous-batching engine with CUDA-graph decode steps), built at the first step and synced with the
   policy's weights after every optimizer step (a LoRA policy's merged: ``train.adapters.merged_state_dict``), as
   TRL syncs vLLM; ``auto``: ``paged`` on CUDA;
2. the rewards score them: functions called as TRL calls them, ``f(prompts=, completions=, completion_ids=,
   **columns)`` with the prompt file's other columns, returning a float (or None) a completion, and reward models
   (``model:DIR``, ``model.reward.TransformerRewardModel`` on prompt + completion); summed with
   ``reward_weights``; a completion no function scores gets advantage 0 and stays out of its group's mean;
3. advantages: each reward minus its group's mean, over the group's standard deviation (``scale_rewards:
   group``; ``batch``: over the batch's; ``none``: not scaled), plus 1e-4;
4. the loss on the completion tokens (the prompt is context): ``-exp(logp - logp.detach()) * A`` (the policy
   gradient of one optimisation pass: value ``-A``, gradient ``-A * grad logp``), with ``beta * KL`` to the
   reference model when beta > 0 (``exp(ref - logp) - (ref - logp) - 1`` times the same unit ratio, so its
   gradient is the unbiased reverse-KL one: TRL's ``use_bias_correction_kl``, on by default); log-probabilities
   of the logits over ``temperature``, as TRL takes them. ``dapo``: over the batch's completion tokens;
   ``grpo``: each completion's token mean, averaged; ``dr_grpo``: each completion's sum over
   ``max_completion_length``, averaged.

Logged as TRL names them: ``reward``, ``reward_std``, ``rewards/<name>/mean``, ``frac_reward_zero_std``,
``completions/mean_length``, ``completions/clipped_ratio``, and ``kl`` when beta > 0.

RLOO (``train.grpo.method: rloo``, Ahmadian et al. 2024, arXiv:2402.14740; the plugin ``rloo``), as TRL's
RLOOTrainer computes it, shares steps 1-2 and changes the rest: with beta > 0 each reward loses ``beta`` times its
completion's summed log-ratio of the policy to the reference (before the step's update; ``kl`` logs its token
mean); advantages are leave-one-out (:func:`rloo_advantages`: the reward minus the mean of its group's other
rewards, then over the batch's mean and standard deviation with ``normalize_advantages``); the loss is the mean
over completions of ``-exp(s - s.detach()) * A``, ``s`` the completion's summed log-probability
(:class:`RLOOModule`). ``reward_std`` is then the batch's standard deviation, as TRL's RLOO logs it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.objectives import eval_mode, make_reference, reference_kind
from rl.prompts import PromptBatch, PromptLoader, build_prompt_dataloader, read_prompts, tokenize_prompt
from specs.batch import IGNORE_INDEX, Batch
from specs.config import GRPOConfig, RunConfig, TrainConfig
from specs.errors import ConfigError, PluginError
from specs.plugins import resolve
from train import adapters

logger = logging.getLogger("rl.grpo")


# ---- rewards ---------------------------------------------------------------------------------------------------------
def load_reward(spec: str, device: torch.device | str = "cpu") -> tuple[str, Callable[..., list[float | None]]]:
    """(name, callable) for a ``train.grpo.rewards`` entry: ``package.module:function`` (imported: trusted code the
    config names, as TRL's reward functions are) or ``model:DIR`` (a reward model directory, scored on prompt +
    completion ids with the run's tokenizer)."""
    if spec.startswith("model:"):
        directory = spec[len("model:"):]
        try:
            cls = resolve("lmstack.models", "reward")
        except PluginError as exc:
            raise ConfigError("train.grpo.rewards", f"{spec}: needs the lmstack.models plugin 'reward' "
                                                    f"(lmstack-model): {exc}") from None
        model = cls.from_pretrained(directory, device=device).eval().requires_grad_(False)
        return f"model:{Path(directory).name}", _RewardModel(model)
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError("train.grpo.rewards", f"{spec!r}: expected package.module:function or model:DIR")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("train.grpo.rewards", f"{spec!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise ConfigError("train.grpo.rewards", f"{spec!r} is not callable")
    return attr, fn


class _RewardModel:
    """A reward model as a reward function: the score of prompt + completion ids, right-padded."""

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def __call__(self, *, prompt_ids: list[list[int]], completion_ids: list[list[int]], **_: Any) -> list[float]:
        rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
        dev = next(self.model.parameters()).device
        T = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, device=dev)
            mask[i, :len(r)] = 1
        return self.model(ids, attn_mask=mask)[:, 0].float().tolist()


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, the std each was scaled by) of rewards (N,) in groups of ``group`` consecutive completions, NaN
    for unscored ones (left out of the means; advantage 0), as TRL's GRPOTrainer computes them."""
    grouped = rewards.view(-1, group)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group)
    if scale == "batch":
        std = _nanstd(rewards).expand_as(rewards)
    else:
        std = _nanstd(grouped, dim=1).repeat_interleave(group)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), std


def rloo_advantages(rewards: torch.Tensor, group: int, normalize: bool = False) -> torch.Tensor:
    """RLOO's advantages of rewards (N,) in groups of ``group`` consecutive completions, as TRL's RLOOTrainer
    computes them: each reward minus the mean of its group's other scored rewards (NaN: unscored, left out of the
    baselines; advantage 0, as is a group's only scored completion's), then over the batch's mean and standard
    deviation (+ 1e-4) with ``normalize``."""
    grouped = rewards.view(-1, group)
    scored = (~torch.isnan(grouped)).sum(1, keepdim=True)
    baselines = (torch.nansum(grouped, 1, keepdim=True) - grouped) / (scored - 1)
    adv = rewards - baselines.reshape(-1)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (_nanstd(adv) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def importance_weights(policy: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, mode: str,
                       low: float | None = None, high: float | None = 3.0) -> torch.Tensor:
    """(B, T) weights correcting tokens sampled by another copy of the policy, as TRL's GRPOTrainer corrects
    vLLM's: ``policy`` and ``sampler`` are (B, T) per-token log-probabilities, ``mask`` the completion tokens.
    ``token_*``: each token's ratio ``exp(policy - sampler)``; ``sequence_*``: each completion's, of the summed
    differences, on all its tokens. ``*_truncate`` clips the ratios to [``low``, ``high``] (None: unbounded),
    ``*_mask`` zeroes those outside. 0 off the mask."""
    diff = ((policy - sampler) * mask).nan_to_num(0.0)
    ratio = torch.exp(diff.sum(-1, keepdim=True) if mode.startswith("sequence") else diff)
    lo = float("-inf") if low is None else low
    hi = float("inf") if high is None else high
    if mode.endswith("truncate"):
        ratio = ratio.clamp(min=lo, max=hi)
    else:
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    return ratio.expand_as(mask) * mask


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The sample (n - 1) standard deviation ignoring NaN, as TRL's nanstd."""
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    n = (~torch.isnan(x)).sum(dim=dim) if dim is not None else (~torch.isnan(x)).sum()
    return torch.sqrt(var * n / (n - 1).clamp(min=1))


# ---- the objective ---------------------------------------------------------------------------------------------------
class GRPOModule(nn.Module):
    """``forward(input_ids, labels, advantages, **fields) -> (loss, stats)``: the GRPO loss of one micro-batch
    (see the module docstring); ``reference`` as :class:`rl.objectives.PreferenceModule`'s (None when beta = 0)."""

    def __init__(self, model: nn.Module, cfg: GRPOConfig, reference: nn.Module | str | None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self._reference = [reference]

    def _logps(self, model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
               fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids, **fields).float() / self.cfg.temperature
        B, T = labels.shape
        return -F.cross_entropy(logits.reshape(B * T, -1), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                reduction="none").view(B, T)

    def _clipped(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                 stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-min(ratio A, clip(ratio) A)`` (``ratio`` capped at ``delta`` in the first), and the clip ratios TRL
        logs, over the ``mask``ed entries."""
        cfg = self.cfg
        low, high = cfg.epsilon, cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        clipped = torch.clamp(ratio, 1 - low, 1 + high)
        capped = ratio if cfg.delta is None else torch.clamp(ratio, max=cfg.delta)
        is_low = ((ratio < 1 - low) & (adv < 0)).float()
        is_high = ((ratio > 1 + high) & (adv > 0)).float()
        n = mask.sum().clamp(min=1)
        stats.update({"clip_ratio/low_mean": (is_low * mask).sum().detach() / n,
                      "clip_ratio/high_mean": (is_high * mask).sum().detach() / n,
                      "clip_ratio/region_mean": (torch.maximum(is_low, is_high) * mask).sum().detach() / n})
        return -torch.min(capped * adv, clipped * adv)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
                old_logps: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        mask = (labels != IGNORE_INDEX).float()
        logp = self._logps(self.model, input_ids, labels, fields)
        # the ratio to the sampling policy: 1 on a generation's first step (old = logp, detached), with logp's gradient
        ratio = torch.exp(logp - (logp.detach() if old_logps is None else old_logps.float()))
        stats: dict[str, torch.Tensor] = {}
        per_token = self._clipped(ratio, advantages.float(), mask, stats)
        if cfg.beta:
            reference = self._reference[0]
            with torch.no_grad():
                if reference == "adapters":
                    with adapters.disabled(self.model), eval_mode(self.model):
                        ref = self._logps(self.model, input_ids, labels, fields)
                else:
                    ref = self._logps(reference, input_ids, labels, fields)
            kl = torch.exp(ref - logp) - (ref - logp) - 1
            per_token = per_token + cfg.beta * kl * ratio  # the unbiased reverse-KL gradient (TRL's default)
            stats["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
        if cfg.loss_type == "dapo":
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        elif cfg.loss_type == "grpo":
            loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
        else:  # dr_grpo
            loss = (per_token * mask).sum() / (labels.shape[0] * cfg.max_completion_length)
        return loss, stats


class RLOOModule(GRPOModule):
    """``forward(input_ids, labels, advantages, **fields) -> (loss, stats)``: RLOO's loss of one micro-batch, the
    mean over its completions of ``-exp(s - s.detach()) * A`` where ``s`` is a completion's summed log-probability
    (of the logits over ``temperature``) and ``A`` its advantage (``advantages`` holds it at every completion
    token), as TRL's RLOOTrainer computes it; past a generation's first step the ratio is to the sampling policy's
    summed log-probability (``old_logps``) and clipped as :class:`GRPOModule`'s, per completion. A masked completion
    (truncated, with ``mask_truncated_completions``) adds 0 (TRL's adds ``-A`` to the value, with no gradient)."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
                old_logps: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = (labels != IGNORE_INDEX).float()
        s = (self._logps(self.model, input_ids, labels, fields) * mask).sum(-1)
        old = s.detach() if old_logps is None else (old_logps.float() * mask).sum(-1)
        adv = (advantages.float() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        stats: dict[str, torch.Tensor] = {}
        loss = self._clipped(torch.exp(s - old), adv, torch.ones_like(adv), stats).mean()
        return loss, stats


class GRPO:
    """The ``lmstack.objectives`` plugins ``grpo`` and ``rloo`` (``train.grpo.method``): ``GRPO(cfg)`` for a
    ``specs.config.GRPOConfig``."""

    name = "grpo"
    prompts = True
    fields = ("advantages", "old_logps")

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.name = cfg.method
        self.iterations = cfg.num_iterations  # Trainer.fit's optimizer steps on each generation
        self._rewards: list[tuple[str, Callable[..., Any]]] | None = None
        self._paged: Any = None  # sampler "paged": serve's PolicySampler, built at the first step
        self._synced_at = -1  # the optimizer step whose weights it holds
        self._seq_len: int | None = None  # data.seq_len, the longest prompt (check() reads it)
        self._module: GRPOModule | None = None  # module()'s: rloo's KL penalty uses its reference

    def check(self, run: RunConfig) -> None:
        if run.data.pack:
            raise ConfigError("data.pack", "prompts are sampled one a row; set data.pack: false")
        if run.dist.strategy == "FSDP":
            raise ConfigError("dist.strategy", "grpo samples with the whole policy on each rank, which FSDP shards; "
                                               "use DDP (or none)")
        self._reference_kind(run.train)
        self._seq_len = run.data.seq_len
        mu = self.cfg.num_iterations
        if mu > 1 and run.train.ckpt_every % mu:
            raise ConfigError("train.ckpt_every", f"{run.train.ckpt_every} is not a multiple of train.grpo."
                                                  f"num_iterations={mu}: checkpoints must fall between generations, "
                                                  "so a resumed run repeats the uninterrupted one")
        if self.cfg.sampler == "paged":
            _paged_sampler()
        if self.cfg.sampler == "generate" and self.cfg.importance_sampling not in ("auto", "none"):
            raise ConfigError("train.grpo.importance_sampling", "corrects the paged sampler's copy; with sampler: "
                                                                "generate the policy samples itself: leave it 'auto'")
        for spec in self.cfg.rewards:  # import errors now, before any work (reward models load when training)
            if not spec.startswith("model:"):
                load_reward(spec)
            elif not Path(spec[len("model:"):]).is_dir():
                raise ConfigError("train.grpo.rewards", f"{spec}: no such reward model directory")

    def _reference_kind(self, train: TrainConfig) -> str | None:
        if not self.cfg.beta:
            return None
        return reference_kind(self.cfg.reference, train, "train.grpo.reference")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        kind = self._reference_kind(train)
        cls = RLOOModule if self.cfg.method == "rloo" else GRPOModule
        self._module = cls(model, self.cfg, make_reference(kind, model, device))
        return self._module

    def units(self, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss_type == "dapo" and self.cfg.method == "grpo":
            return (labels != IGNORE_INDEX).sum()
        return torch.tensor(labels.shape[0], device=labels.device)

    def correction(self, device: torch.device) -> str:
        """``train.grpo.importance_sampling`` with ``auto`` decided: ``sequence_mask`` for GRPO sampling with the
        ``paged`` copy, else ``none`` (the policy samples itself, or RLOO)."""
        mode = self.cfg.importance_sampling
        if mode != "auto":
            return mode if self.sampler_kind(device) == "paged" else "none"
        return "sequence_mask" if self.cfg.method == "grpo" and self.sampler_kind(device) == "paged" else "none"

    def sampler_kind(self, device: torch.device) -> str:
        """``generate`` or ``paged``: ``train.grpo.sampler`` with ``auto`` decided for ``device``."""
        kind = self.cfg.sampler
        return kind if kind != "auto" else ("paged" if torch.device(device).type == "cuda" else "generate")

    def _sampler(self, trainer: Any, rows: int) -> Any:
        """The ``paged`` sampler (serve's PolicySampler over a copy of the policy), built at the first step with
        room for ``rows`` completions at once, and synced with the policy's weights whenever an optimizer step
        changed them since (a LoRA policy's merged)."""
        model, step = trainer.module, trainer.global_step
        if self._paged is not None and self._synced_at == step:
            return self._paged
        state = adapters.merged_state_dict(model) if trainer.cfg.lora is not None else model.state_dict()
        if self._paged is None:
            cls = _paged_sampler()
            with trainer.autocast():  # the copy's dtype: what the forward computes in
                dtype = (torch.get_autocast_dtype(trainer.device.type)
                         if torch.is_autocast_enabled(trainer.device.type) else next(model.parameters()).dtype)
            tok = trainer.tokenizer
            eos = getattr(tok, "eos_id", None)
            longest = (self._seq_len or model.config.max_seq_len) + self.cfg.max_completion_length
            self._paged = cls(model, max_batch_size=rows, max_seq_len=min(longest, model.config.max_seq_len),
                              dtype=dtype, eos_ids=() if eos is None else (int(eos),), state_dict=state)
        else:
            self._paged.sync(state)
        self._synced_at = step
        return self._paged

    @torch.no_grad()
    def _policy_logps(self, trainer: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, T) the policy's log-probabilities of the completion tokens (of the logits over the temperature), 0
        elsewhere, before this generation's updates (the model's mode, the run's precision), on the host: the
        ratios' denominators past a generation's first step, and RLOO's KL estimate with the reference's."""
        return self._logps_of(trainer, trainer.module, ids, labels)

    @torch.no_grad()
    def _ref_logps(self, trainer: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:meth:`_policy_logps` of the reference model (eval mode; ``adapters``: the policy without them)."""
        reference = self._module._reference[0] if self._module is not None else None
        if reference is None:
            raise ConfigError("train.grpo.beta", "RLOO's KL penalty needs the objective's module (module() first)")
        with eval_mode(trainer.module):
            if reference == "adapters":
                with adapters.disabled(trainer.module):
                    return self._logps_of(trainer, trainer.module, ids, labels)
            return self._logps_of(trainer, reference, ids, labels)

    def _logps_of(self, trainer: Any, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        module = self._module or GRPOModule(trainer.module, self.cfg, None)
        ids, labels = ids.to(trainer.device), labels.to(trainer.device)
        with trainer.autocast():
            return (module._logps(model, ids, labels, {}) * (labels != IGNORE_INDEX)).float().cpu()

    def rewards(self, device: torch.device) -> list[tuple[str, Callable[..., Any]]]:
        if self._rewards is None:
            self._rewards = [load_reward(spec, device) for spec in self.cfg.rewards]
        return self._rewards

    @torch.no_grad()
    def prepare(self, batch: PromptBatch, trainer: Any) -> tuple[Batch, dict[str, torch.Tensor]]:
        """Sample, score and build this rank's training batch from its prompts (see the module docstring)."""
        cfg, G = self.cfg, self.cfg.num_generations
        tok = trainer.tokenizer
        if tok is None:
            raise ConfigError("tokenizer", "grpo decodes completions for its rewards: pass the Trainer a tokenizer")
        model, device = trainer.module, trainer.device
        eos = getattr(tok, "eos_id", None)
        pad = getattr(tok, "pad_id", None)
        pad = int(pad if pad is not None else (eos if eos is not None else 0))
        prompts = [p for p in batch.ids for _ in range(G)]
        seed = (int(trainer.cfg.seed) * 1_000_003 + trainer.global_step * 1_009 + trainer.env.rank) % 2**63
        seed += 0 if model.training else 7
        if self.sampler_kind(device) == "paged":
            sampler = self._sampler(trainer, len(prompts))
            out = sampler.sample(prompts, cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                                 top_k=cfg.top_k, seed=seed)
        else:
            generate = resolve("lmstack.generators", "default")
            gen = torch.Generator(device=device).manual_seed(seed)
            with eval_mode(model), trainer.autocast():  # sampled in the run's precision, as the forward runs
                out = generate(model, prompts, cfg.max_completion_length, eos_token_id=eos, pad_token_id=pad,
                               generator=gen, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                               return_dict=True)
        completions = [list(map(int, t)) for t in out.tokens]
        truncated = [reason == "length" for reason in out.finish_reasons]
        texts = [tok.decode([t for t in c if t != eos]) for c in completions]
        records = [r for r in batch.records for _ in range(G)]
        chat = not isinstance(records[0]["prompt"], str)
        columns = {k: [r.get(k) for r in records] for k in records[0] if k != "prompt"}
        per_func = []
        stats: dict[str, torch.Tensor] = {}
        for name, fn in self.rewards(device):
            if isinstance(fn, _RewardModel):
                with trainer.autocast():
                    got = fn(prompt_ids=prompts, completion_ids=completions)
            else:
                got = fn(prompts=[r["prompt"] for r in records],
                         completions=[[{"role": "assistant", "content": t}] for t in texts] if chat else texts,
                         completion_ids=completions, **columns)
            if len(got) != len(texts):
                raise ConfigError("train.grpo.rewards", f"{name} returned {len(got)} rewards for {len(texts)} "
                                                        "completions")
            values = torch.tensor([_score(v, name, i) for i, v in enumerate(got)], dtype=torch.float32)
            per_func.append(values)
            stats[f"rewards/{name}/mean"] = torch.nanmean(values).nan_to_num(0.0)
        by_func = torch.stack(per_func, 1)
        weights = torch.tensor(cfg.reward_weights or [1.0] * len(per_func))
        rewards = (by_func * weights).nansum(1)
        rewards[torch.isnan(by_func).all(1)] = float("nan")
        rows = [_row(p, c, pad) for p, c in zip(prompts, completions)]
        ids, labels, mask = _collate(rows, truncated if cfg.mask_truncated_completions else None, pad)
        correct = self.correction(device)
        old = self._policy_logps(trainer, ids, labels) if cfg.num_iterations > 1 or correct != "none" or (
            cfg.method == "rloo" and cfg.beta) else None
        if cfg.method == "rloo":
            group_std = _nanstd(rewards.view(-1, G), dim=1)
            penalised = rewards
            if cfg.beta:  # the summed log-ratio to the reference, out of the reward (TRL's RLOO)
                kl = old - self._ref_logps(trainer, ids, labels)
                penalised = rewards - cfg.beta * kl.sum(-1)
                stats["kl"] = kl.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
            advantages, std = rloo_advantages(penalised, G, cfg.normalize_advantages), group_std
            spread = _nanstd(rewards)
        else:
            advantages, std = group_advantages(rewards, G, cfg.scale_rewards)
            spread = torch.nanmean(_nanstd(rewards.view(-1, G), dim=1))
        adv = torch.where(labels != IGNORE_INDEX, advantages[:, None], 0.0)
        if correct != "none":  # the copy's probabilities against the policy's: TRL's vLLM correction
            lab = (labels != IGNORE_INDEX).float()
            sampled = torch.zeros(labels.shape)
            for r, (p, c) in enumerate(zip(prompts, self._paged.score(prompts, completions,
                                                                      temperature=cfg.temperature))):
                sampled[r, len(p) - 1:len(p) - 1 + len(c)] = c
            w = importance_weights(old, sampled, lab, correct, cfg.importance_sampling_min,
                                   cfg.importance_sampling_max)
            adv = adv * w  # w >= 0: -min(r A w, clip(r) A w) is w times the uncorrected term, as TRL weighs it
            gap = ((old - sampled).abs() * lab)[lab.bool()]
            flat = w.amax(-1)[lab.bool().any(-1)] if correct.startswith("sequence") else w[lab.bool()]
            stats.update({"sampling/sampling_logp_difference/mean": gap.mean() if gap.numel() else torch.zeros(()),
                          "sampling/sampling_logp_difference/max": gap.max() if gap.numel() else torch.zeros(()),
                          "sampling/importance_sampling_ratio/min": flat.min() if flat.numel() else torch.zeros(()),
                          "sampling/importance_sampling_ratio/mean": flat.mean() if flat.numel() else torch.zeros(()),
                          "sampling/importance_sampling_ratio/max": flat.max() if flat.numel() else torch.zeros(())})
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
        stats.update({"reward": torch.nanmean(rewards).nan_to_num(0.0),
                      "reward_std": spread.nan_to_num(0.0),
                      "frac_reward_zero_std": torch.isclose(std, torch.zeros_like(std)).float().mean(),
                      "completions/mean_length": lengths.mean(),
                      "completions/clipped_ratio": torch.tensor(truncated, dtype=torch.float32).mean()})
        return (Batch(input_ids=ids, labels=labels, attention_mask=mask, advantages=adv,
                      old_logps=old if cfg.num_iterations > 1 or correct != "none" else None),
                {k: v.to(device) for k, v in stats.items()})


def _paged_sampler() -> Any:
    """serve's PolicySampler (the ``lmstack.samplers`` plugin ``paged``), or a ConfigError saying what to do."""
    try:
        return resolve("lmstack.samplers", "paged")
    except PluginError as exc:
        raise ConfigError("train.grpo.sampler", f"'paged' needs the lmstack.samplers plugin 'paged' (pip install "
                                                f"lmstack-serve), or set sampler: generate ({exc})") from None


def _score(value: Any, name: str, i: int) -> float:
    """A reward function's value as a float (None: unscored, NaN); anything else is a ConfigError naming it."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError("train.grpo.rewards", f"{name} returned {value!r} for completion {i}; expected a number "
                                                "or None") from None


def _row(prompt: list[int], completion: list[int], pad: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of prompt + completion shifted for next-token prediction, the prompt's labels ignored."""
    full = list(prompt) + list(completion)
    labels = [t if i >= len(prompt) else IGNORE_INDEX for i, t in enumerate(full)][1:]
    return full[:-1], labels


def _collate(rows: list[tuple[list[int], list[int]]], truncated: list[bool] | None,
             pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask) of the rows, right-padded to a multiple of 8; a truncated row (when
    ``truncated`` is given) has no labels: it is left out of the loss (mask_truncated_completions)."""
    T = -(-max(len(x) for x, _ in rows) // 8) * 8
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
        if truncated is None or not truncated[r]:
            labels[r, :len(y)] = torch.tensor(y)
    return ids, labels, mask


__all__ = ["GRPO", "GRPOModule", "PromptBatch", "PromptLoader", "RLOOModule", "build_prompt_dataloader",
           "group_advantages", "load_reward", "read_prompts", "rloo_advantages", "tokenize_prompt"]
