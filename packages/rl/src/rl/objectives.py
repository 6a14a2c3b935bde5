"""Preference objectives for the Trainer: the ``lmstack.objectives`` plugins ``dpo``, ``orpo``, ``cpo``, ``simpo``,
``reward`` and ``kto`` (``train.preference``; the protocol is in :mod:`train.objective`). KTO's batches are
unpaired examples, each beside its KL row (:mod:`rl.unpaired`); :class:`KTO` says how it scores them.

A batch holds pairs in consecutive rows, the chosen completion then the rejected one (:mod:`rl.data`); its
``labels`` mark the completion tokens. One forward of the policy scores both rows of every pair. DPO scores them
again under the reference model, without gradients: a frozen copy of the starting weights (``reference: copy``)
or, under ``train.lora``, the policy with its adapters off (``adapters``: no second copy of the weights, as TRL does
with a PEFT model). The reference runs in eval mode (no dropout), the policy in the Trainer's mode.

Each micro-batch's loss is the mean over its pairs, and the Trainer weights micro-batches by their pairs, so a step
equals one on the whole batch however ``train.grad_accum`` and the ranks split it. Logged, as TRL names them:
``rewards/chosen``, ``rewards/rejected`` (DPO: beta times the log-ratio to the reference; ORPO and SimPO: beta times
the token-mean log-probability; CPO: beta times the summed one), ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``; ORPO, CPO and SimPO add ``nll_loss``, ORPO ``log_odds_ratio`` and
``log_odds_chosen``; the reward objective logs ``accuracy``, ``margin`` and ``mean_reward`` (:class:`Reward`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.losses import DPO_LOSSES, cpo_loss, dpo_loss, orpo_odds_ratio, sequence_logps, token_logps
from specs.batch import Batch
from specs.config import PreferenceConfig, RunConfig, TrainConfig
from specs.errors import ConfigError
from train import adapters


def _pairs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows) of a paired batch: rows 0, 2, 4... and 1, 3, 5..."""
    if t.shape[0] % 2:
        raise ConfigError("data.dataset", f"a batch of {t.shape[0]} rows is not whole (chosen, rejected) pairs")
    return t[0::2], t[1::2]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class PreferenceModule(nn.Module):
    """``forward(input_ids, labels, **fields) -> (loss, stats)`` for one micro-batch of pairs; ``model`` is the
    policy. ``reference`` is a frozen model, the string ``"adapters"`` (the policy without its LoRA adapters) or
    None (reference-free: ORPO). ``loss_fn(policy, reference)`` maps the per-row (logps, tokens) of both to the
    per-pair losses and the stats."""

    def __init__(self, model: nn.Module, reference: nn.Module | str | None,
                 loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]):
        super().__init__()
        self.model = model
        # outside the module tree: not trained, not saved, not wrapped by DDP/FSDP, not moved by .to()
        self._reference = [reference]
        self.loss_fn = loss_fn

    @property
    def reference(self) -> nn.Module | str | None:
        return self._reference[0]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, ref_logps: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _pairs(input_ids)
        policy = sequence_logps(self.model(input_ids, **fields), labels)
        ref = None
        if ref_logps is not None:  # computed before training (precompute_reference)
            ref = (ref_logps.float().sum(-1), policy[1])
        elif self.reference is not None:
            with torch.no_grad():
                if self.reference == "adapters":
                    with adapters.disabled(self.model), eval_mode(self.model):
                        ref = sequence_logps(self.model(input_ids, **fields), labels)
                else:
                    ref = sequence_logps(self.reference(input_ids, **fields), labels)
        losses, stats = self.loss_fn(policy, ref, labels)
        return losses.mean(), {k: v.detach().float().mean() for k, v in stats.items()}


def reference_kind(kind: str, train: TrainConfig, field: str) -> str:
    """``copy`` or ``adapters`` for a ``reference`` setting: ``auto`` is adapters under train.lora, else copy;
    ``adapters`` without train.lora is a ConfigError naming ``field``."""
    if kind == "adapters" and train.lora is None:
        raise ConfigError(field, "'adapters' is the model with its LoRA adapters off, so it needs train.lora; use "
                                 "'copy' (or 'auto')")
    if kind == "auto":
        return "adapters" if train.lora is not None else "copy"
    return kind


def make_reference(kind: str | None, model: nn.Module, device: torch.device) -> nn.Module | str | None:
    """The reference model for ``kind``: a frozen eval-mode copy of ``model`` on ``device`` (``copy``), the string
    ``"adapters"`` (the model with its LoRA adapters off), or None."""
    if kind == "copy":
        return copy.deepcopy(model).to(device).eval().requires_grad_(False)
    return "adapters" if kind == "adapters" else None


_KTO_ONLY = ("desirable_weight", "undesirable_weight")
_DPO_ONLY = ("precompute_reference",)
_CONTRASTIVE_ONLY = ("temperature",)
_OTHERS = (*_KTO_ONLY, *_DPO_ONLY, *_CONTRASTIVE_ONLY)  # what reference-free and reward methods take none of


def _only_defaults(cfg: PreferenceConfig, method: str, names: tuple[str, ...], why: str) -> None:
    defaults = PreferenceConfig()
    for name in names:
        if getattr(cfg, name) != getattr(defaults, name):
            raise ConfigError(f"train.preference.{name}", f"{method} has no {name} ({why}); leave it at "
                                                          f"{getattr(defaults, name)!r}")


def _check_loss(cfg: PreferenceConfig, method: str, losses: tuple[str, ...], smoothed: str) -> None:
    """``loss_type`` is one of ``losses``, and ``label_smoothing`` is 0 unless it is the ``smoothed`` loss."""
    if cfg.loss_type not in losses:
        raise ConfigError("train.preference.loss_type", f"{method} takes one of {', '.join(losses)}, got "
                                                        f"{cfg.loss_type!r}")
    if cfg.label_smoothing and cfg.loss_type != smoothed:
        raise ConfigError("train.preference.label_smoothing", f"only the {smoothed} loss flips labels; with "
                                                              f"loss_type {cfg.loss_type!r} set it to 0")


def as_rows(batch: Any) -> Batch:
    return batch if isinstance(batch, Batch) else Batch(**batch)


def _row_key(b: Batch, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A row's identity whatever its batch: its real tokens and their labels."""
    n = int(b.attention_mask[r].sum()) if b.attention_mask is not None else b.shape[1]
    return tuple(b.input_ids[r, :n].tolist()), tuple(b.labels[r, :n].tolist())


def _pair_source(loader: Any) -> Any:
    """The preference loader under ``loader`` (train.run wraps it per rank), or None."""
    while loader is not None and not hasattr(loader, "pairs"):
        loader = getattr(loader, "loader", None)
    return loader


def _check_common(cfg: PreferenceConfig, run: RunConfig) -> None:
    if run.data.pack:
        raise ConfigError("data.pack", "preference pairs are one completion a row (padded); set data.pack: false")
    if run.data.dataset == "unpaired" and cfg.method != "kto":
        raise ConfigError("data.dataset", f"{cfg.method} trains on (chosen, rejected) pairs: data.dataset: "
                                          "preference; unpaired examples are kto's")


class _PairObjective:
    """What the preference objectives share: their config, and batches of pairs whose units are the pairs."""

    paired = True

    def __init__(self, cfg: PreferenceConfig):
        self.cfg = cfg

    @staticmethod
    def units(labels: torch.Tensor) -> torch.Tensor:
        return torch.tensor(labels.shape[0] // 2, device=labels.device)


class DPO(_PairObjective):
    """The ``lmstack.objectives`` plugin ``dpo``: ``DPO(cfg)`` for a ``PreferenceConfig``.

    With ``precompute_reference`` the first :meth:`prepare` scores every pair of the Trainer's loaders (train and
    eval) under the reference, keeps each row's per-token log-probabilities by its tokens, and frees a reference
    copy; each batch then carries them (``Batch.ref_logps``) and the module skips the reference's forward (TRL's
    ``precompute_ref_log_probs``)."""

    name = "dpo"
    fields = ("ref_logps",)

    def __init__(self, cfg: PreferenceConfig):
        super().__init__(cfg)
        self._module: PreferenceModule | None = None
        self._table: dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor] | None = None

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        self.check_options()
        self._reference_kind(run.train)

    def _reference_kind(self, train: TrainConfig) -> str:
        return reference_kind(self.cfg.reference, train, "train.preference.reference")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        self._module = PreferenceModule(model, make_reference(self._reference_kind(train), model, device), self._loss)
        self._table = None
        return self._module

    def prepare(self, batch: Any, trainer: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """The batch as it is, or with ``precompute_reference`` its rows' reference log-probabilities."""
        if not self.cfg.precompute_reference:
            return batch, {}
        if self._table is None:
            self._table = self._precompute(trainer)
        b = as_rows(batch)
        ref = torch.zeros(b.labels.shape, dtype=torch.float32)
        for r in range(b.shape[0]):
            key = _row_key(b, r)
            if key not in self._table:
                raise ConfigError("train.preference.precompute_reference", f"row {r} of a batch is not from the "
                                  "Trainer's loaders, whose pairs were scored before the first step")
            ref[r, :len(self._table[key])] = self._table[key]
        return replace(b, ref_logps=ref), {}

    @torch.no_grad()
    def _precompute(self, trainer: Any) -> dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor]:
        """Every row of the Trainer's loaders' pairs -> its reference per-token log-probabilities (up to its last
        real token); then a reference copy is dropped (the module's reference becomes None)."""
        module = self._module
        if module is None or module.reference is None:
            raise ConfigError("train.preference.precompute_reference", "needs the objective's module (module() first)")
        table: dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
        model, reference = module.model, module.reference
        for loader in (trainer.dataloader, trainer.eval_dataloader):
            source = _pair_source(loader)
            if source is None:
                continue
            pairs = source.pairs
            for i in range(0, len(pairs), source.batch_size):
                b = source._make(pairs[i:i + source.batch_size])
                ids, labels = b.input_ids.to(trainer.device), b.labels.to(trainer.device)
                mask = b.attention_mask.to(trainer.device)
                with trainer.autocast():
                    if reference == "adapters":
                        with adapters.disabled(model), eval_mode(model):
                            lp = token_logps(model(ids, attn_mask=mask), labels)
                    else:
                        lp = token_logps(reference(ids, attn_mask=mask), labels)
                lp = lp.cpu()
                for r in range(b.shape[0]):
                    key = _row_key(b, r)
                    table[key] = lp[r, :len(key[0])].clone()
        if reference != "adapters":
            module._reference[0] = None  # the copy's memory goes back
        return table

    def check_options(self) -> None:
        _check_loss(self.cfg, "dpo", DPO_LOSSES, "robust")
        _only_defaults(self.cfg, "dpo", ("center_rewards", "simpo_gamma", *_KTO_ONLY, *_CONTRASTIVE_ONLY),
                       "another method's option")

    def _loss(self, policy: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor] | None,
              labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert ref is not None
        cfg = self.cfg
        (c, r), (nc, nr) = _pairs(policy[0]), _pairs(policy[1])
        rc, rr = _pairs(ref[0])
        losses = dpo_loss(c, r, rc, rr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                          chosen_tokens=nc, rejected_tokens=nr)
        if cfg.sft_weight:
            losses = losses + cfg.sft_weight * (-c / nc.clamp(min=1))  # RPO: the chosen completion's token-mean NLL
        chosen_rewards = cfg.beta * (c - rc).detach()
        rejected_rewards = cfg.beta * (r - rr).detach()
        return losses, {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                        "rewards/margins": chosen_rewards - rejected_rewards,
                        "logps/chosen": c.detach(), "logps/rejected": r.detach()}


class ORPO(_PairObjective):
    """The ``lmstack.objectives`` plugin ``orpo`` (reference-free): the chosen completion's token-mean
    cross-entropy minus ``beta * log sigmoid(log odds ratio)`` of the completions' token-mean probabilities."""

    name = "orpo"

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        self.check_options()

    def check_options(self) -> None:
        _only_defaults(self.cfg, "orpo", ("loss_type", "label_smoothing", "sft_weight", "reference", *_OTHERS,
                                          "center_rewards", "simpo_gamma"), "it is reference-free, with its own loss")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        return PreferenceModule(model, None, self._loss)


    def _loss(self, policy: tuple[torch.Tensor, torch.Tensor], ref: Any,
              labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (c, r), (nc, nr) = _pairs(policy[0]), _pairs(policy[1])
        mc, mr = c / nc.clamp(min=1), r / nr.clamp(min=1)
        ratio, log_odds = orpo_odds_ratio(mc, mr)
        nll = -mc
        losses = nll - self.cfg.beta * ratio
        chosen_rewards, rejected_rewards = self.cfg.beta * mc.detach(), self.cfg.beta * mr.detach()
        return losses, {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                        "rewards/margins": chosen_rewards - rejected_rewards,
                        "logps/chosen": mc.detach(), "logps/rejected": mr.detach(), "nll_loss": nll.detach(),
                        "log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach()}


class CPO(_PairObjective):
    """The ``lmstack.objectives`` plugins ``cpo`` (Contrastive Preference Optimization, Xu et al. 2024) and
    ``simpo`` (Simple Preference Optimization, Meng et al. 2024): reference-free, as TRL's CPOTrainer computes them.

    CPO is DPO's loss without the reference, on the completions' summed log-probabilities (token means for
    ``ipo``), plus ``sft_weight`` (TRL's ``cpo_alpha``) times the chosen completion's token-mean cross-entropy.
    SimPO uses token-mean log-probabilities and a target margin: ``-log sigmoid(beta * (chosen - rejected) -
    simpo_gamma)``. Both flip labels at ``label_smoothing`` for the sigmoid forms."""

    LOSSES = {"cpo": ("sigmoid", "hinge", "ipo"), "simpo": ("sigmoid",)}

    def __init__(self, cfg: PreferenceConfig):
        super().__init__(cfg)
        self.name = cfg.method

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        self.check_options()

    def check_options(self) -> None:
        cfg = self.cfg
        _check_loss(cfg, self.name, self.LOSSES[self.name], "sigmoid")
        names = ("reference", "center_rewards", *_OTHERS) + (("simpo_gamma",) if self.name == "cpo" else ())
        _only_defaults(cfg, self.name, names, "another method's option")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        return PreferenceModule(model, None, self._loss)


    def _loss(self, policy: tuple[torch.Tensor, torch.Tensor], ref: Any,
              labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        (c, r), (nc, nr) = _pairs(policy[0]), _pairs(policy[1])
        mc, mr = c / nc.clamp(min=1), r / nr.clamp(min=1)
        average = self.name == "simpo" or cfg.loss_type == "ipo"
        chosen, rejected = (mc, mr) if average else (c, r)
        losses = cpo_loss(chosen, rejected, beta=cfg.beta, loss_type=cfg.loss_type,
                          label_smoothing=cfg.label_smoothing, gamma=cfg.simpo_gamma if self.name == "simpo" else 0.0)
        nll = -mc
        if cfg.sft_weight:
            losses = losses + cfg.sft_weight * nll
        chosen_rewards, rejected_rewards = cfg.beta * chosen.detach(), cfg.beta * rejected.detach()
        return losses, {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                        "rewards/margins": chosen_rewards - rejected_rewards,
                        "logps/chosen": chosen.detach(), "logps/rejected": rejected.detach(),
                        "nll_loss": nll.detach()}


class RewardModule(nn.Module):
    """``forward(input_ids, labels, **fields) -> (loss, stats)`` for a reward model (a ``score`` head, e.g.
    ``model.reward.TransformerRewardModel``) on a micro-batch of pairs: each row's whole sequence, prompt and
    completion, is scored at its last token, and the loss is the Bradley-Terry ``-log sigmoid(r_chosen -
    r_rejected)``, plus ``center * (r_chosen + r_rejected)^2``, as TRL's RewardTrainer computes it.

    The data loaders' rows are shifted for next-token prediction (inputs without the last token, which is the last
    label); the full sequence is put back together here, so rows must be right-padded (``rl.data``'s are)."""

    def __init__(self, model: nn.Module, center: float):
        super().__init__()
        self.model = model
        self.center = center

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _pairs(input_ids)
        ids, mask, positions = full_sequences(input_ids, labels, attn_mask, positions)
        scores = self.model(ids, attn_mask=mask, **({"positions": positions} if positions is not None else {}))
        c, r = _pairs(scores[:, 0].float())
        losses = -F.logsigmoid(c - r)
        if self.center:
            losses = losses + self.center * (c + r) ** 2
        c, r = c.detach(), r.detach()
        stats = {"accuracy": (c > r).float(), "margin": c - r, "mean_reward": (c + r) / 2, "rewards/chosen": c,
                 "rewards/rejected": r}
        return losses.mean(), {k: v.mean() for k, v in stats.items()}


def full_sequences(input_ids: torch.Tensor, labels: torch.Tensor, attn_mask: torch.Tensor | None,
                   positions: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The unshifted, right-padded rows (B, T + 1) of a shifted batch, their mask and positions: each row's last
    label appended after its last input token."""
    B, T = input_ids.shape
    rows = torch.arange(B, device=input_ids.device)
    mask = attn_mask if attn_mask is not None else torch.ones_like(input_ids)
    last = mask.sum(-1).long() - 1  # the last real input position (right padding)
    ids = F.pad(input_ids, (0, 1))
    ids[rows, last + 1] = labels[rows, last].clamp_min(0)
    full_mask = F.pad(mask, (0, 1))
    full_mask[rows, last + 1] = 1
    if positions is not None:
        positions = F.pad(positions, (0, 1))
        positions[rows, last + 1] = positions[rows, last] + 1
    return ids, full_mask, positions


class Reward(_PairObjective):
    """The ``lmstack.objectives`` plugin ``reward``: a Bradley-Terry reward model trained on preference pairs (TRL's
    RewardTrainer). The model needs a ``score`` head (``model.arch: reward``, ``model.reward.TransformerRewardModel``;
    ``train.init_from`` a causal LM gives it a new head). Under ``train.lora`` the head trains with the adapters (as
    PEFT's ``modules_to_save`` does for sequence classification)."""

    name = "reward"

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        self.check_options()
        from specs.plugins import resolve

        with torch.device("meta"):
            self._check_model(resolve("lmstack.models", run.model.arch)(run.model))

    def check_options(self) -> None:
        _only_defaults(self.cfg, "reward", ("loss_type", "label_smoothing", "sft_weight", "reference", *_OTHERS,
                                            "simpo_gamma"), "it trains a reward model, with the Bradley-Terry loss")

    @staticmethod
    def _check_model(model: nn.Module) -> None:
        score = getattr(model, "score", None)
        if not isinstance(score, nn.Linear) or score.out_features != 1:
            raise ConfigError("model.arch", f"the reward objective trains a model with a one-output score head; "
                                            f"{type(model).__name__} has none: set model.arch: reward")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        self._check_model(model)
        if train.lora is not None:
            model.score.requires_grad_(True)
        return RewardModule(model, self.cfg.center_rewards)



__all__ = ["CPO", "DPO", "ORPO", "PreferenceModule", "Reward", "RewardModule", "full_sequences"]


KTO_LOSSES = ("sigmoid", "kto", "apo_zero_unpaired")


class KTOModule(nn.Module):
    """``forward(input_ids, labels, advantages, **fields) -> (loss, stats)`` for one micro-batch of KTO rows: each
    example's row, then its KL row (:mod:`rl.unpaired`); ``advantages`` > 0 at an example's completion tokens marks
    it desirable. The policy scores the examples with gradients and the KL rows without; the reference (a frozen
    model or ``"adapters"``) scores both. See :class:`KTO` for the loss."""

    def __init__(self, model: nn.Module, reference: nn.Module | str, cfg: PreferenceConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self._reference = [reference]

    def _ref(self, ids: torch.Tensor, labels: torch.Tensor, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        reference = self._reference[0]
        with torch.no_grad():
            if reference == "adapters":
                with adapters.disabled(self.model), eval_mode(self.model):
                    return sequence_logps(self.model(ids, **fields), labels)[0]
            return sequence_logps(reference(ids, **fields), labels)[0]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
                **fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        (ex, kl_ids), (lab, kl_lab) = _pairs(input_ids), _pairs(labels)
        f_ex = {k: v[0::2] for k, v in fields.items()}
        f_kl = {k: v[1::2] for k, v in fields.items()}
        logps = sequence_logps(self.model(ex, **f_ex), lab)[0]
        ratio = logps - self._ref(ex, lab, f_ex)
        if cfg.loss_type == "apo_zero_unpaired":
            kl = torch.zeros((), device=logps.device)
        else:  # the KL term from mismatched pairs: no gradient, at least 0
            with torch.no_grad():
                kl = (sequence_logps(self.model(kl_ids, **f_kl), kl_lab)[0] - self._ref(kl_ids, kl_lab, f_kl))
                kl = kl.mean().clamp(min=0)
        good = (advantages[0::2].float() * (lab != -100)).sum(-1) > 0
        if cfg.loss_type == "apo_zero_unpaired":
            losses = torch.where(good, 1 - torch.sigmoid(cfg.beta * ratio), torch.sigmoid(cfg.beta * ratio))
        else:  # Ethayarajh et al.'s eq. 7
            losses = torch.where(good, 1 - torch.sigmoid(cfg.beta * (ratio - kl)),
                                 1 - torch.sigmoid(cfg.beta * (kl - ratio)))
        losses = losses * torch.where(good, cfg.desirable_weight, cfg.undesirable_weight)
        rewards = cfg.beta * ratio.detach()

        def mean(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return (x * rows).sum() / rows.sum().clamp(min=1)

        bad = ~good
        chosen, rejected = mean(rewards, good), mean(rewards, bad)
        return losses.mean(), {"kl": kl.detach(), "rewards/chosen": chosen, "rewards/rejected": rejected,
                               "rewards/margins": chosen - rejected, "logps/chosen": mean(logps.detach(), good),
                               "logps/rejected": mean(logps.detach(), bad)}


class KTO(_PairObjective):
    """The ``lmstack.objectives`` plugin ``kto`` (Kahneman-Tversky Optimization, Ethayarajh et al. 2024), as TRL's
    KTOTrainer computes it, on unpaired examples (``data.dataset: unpaired``). With ``r`` an example's summed
    log-ratio of the policy to the reference and ``z`` the mean log-ratio over the batch's KL rows (each prompt with
    another example's completion; detached, at least 0), a desirable example loses ``1 - sigmoid(beta (r - z))``
    and an undesirable one ``1 - sigmoid(beta (z - r))``, weighted by ``desirable_weight`` and
    ``undesirable_weight``; the loss is their mean. ``loss_type``: ``sigmoid`` (the default) or ``kto`` for that;
    ``apo_zero_unpaired`` (D'Oosterlinck et al. 2024): ``1 - sigmoid(beta r)`` and ``sigmoid(beta r)``, no KL.
    Logged: ``kl`` and, over each micro-batch's desirable and undesirable examples, ``rewards/chosen``,
    ``rewards/rejected`` (beta r), ``rewards/margins``, ``logps/chosen`` and ``logps/rejected``."""

    name = "kto"
    fields = ("advantages",)

    def check(self, run: RunConfig) -> None:
        _check_common(self.cfg, run)
        if run.data.dataset != "unpaired":
            raise ConfigError("data.dataset", "kto trains on examples labelled desirable or not: data.dataset: "
                                              f"unpaired (it reads preference pairs too), got {run.data.dataset!r}")
        self.check_options()
        reference_kind(self.cfg.reference, run.train, "train.preference.reference")

    def check_options(self) -> None:
        _check_loss(self.cfg, "kto", KTO_LOSSES, "")
        _only_defaults(self.cfg, "kto", ("sft_weight", "center_rewards", "simpo_gamma", *_DPO_ONLY,
                                         *_CONTRASTIVE_ONLY), "another method's option")

    def module(self, model: nn.Module, *, train: TrainConfig, device: torch.device) -> nn.Module:
        self.check_options()
        kind = reference_kind(self.cfg.reference, train, "train.preference.reference")
        return KTOModule(model, make_reference(kind, model, device), self.cfg)

    @staticmethod
    def units(labels: torch.Tensor) -> torch.Tensor:  # examples: half the rows (the others are their KL rows)
        return torch.tensor(labels.shape[0] // 2, device=labels.device)
