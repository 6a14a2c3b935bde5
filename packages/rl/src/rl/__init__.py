"""lmstack preference optimisation: DPO and ORPO as Trainer objectives (``train.preference``), preference data I/O
(``data.dataset: preference``), and the losses as TRL computes them."""

from rl.data import PreferenceLoader, build_preference_dataloader, read_preferences, tokenize_pair
from rl.losses import dpo_loss, orpo_odds_ratio, sequence_logps
from rl.objectives import DPO, ORPO, PreferenceModule

__version__ = "0.1.0"
__all__ = ["DPO", "ORPO", "PreferenceLoader", "PreferenceModule", "build_preference_dataloader", "dpo_loss",
           "orpo_odds_ratio", "read_preferences", "sequence_logps", "tokenize_pair"]
