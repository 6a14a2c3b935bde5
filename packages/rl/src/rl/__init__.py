"""lmstack post-training: DPO, ORPO, CPO, SimPO and reward models as Trainer objectives (``train.preference``),
GRPO (``train.grpo``, :mod:`rl.grpo`), preference and prompt data I/O, and the losses as TRL computes them."""

from rl.data import PreferenceLoader, build_preference_dataloader, read_preferences, tokenize_pair
from rl.losses import cpo_loss, dpo_loss, orpo_odds_ratio, sequence_logps
from rl.objectives import CPO, DPO, ORPO, PreferenceModule, Reward

__version__ = "0.4.0"
__all__ = ["CPO", "DPO", "ORPO", "PreferenceLoader", "PreferenceModule", "Reward", "build_preference_dataloader",
           "cpo_loss", "dpo_loss", "orpo_odds_ratio", "read_preferences", "sequence_logps", "tokenize_pair"]
