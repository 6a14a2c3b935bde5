"""lmstack interpretability: activation capture and patching, the logit lens, causal tracing, attention patterns,
sparse autoencoders."""

from interpret.anatomy import Anatomy, anatomy
from interpret.cache import ActivationCache, capture
from interpret.hooks import POINTS, intervene
from interpret.lens import kl_to_final, lens_report, logit_lens
from interpret.patching import PatchResult, activation_patching, causal_trace, logit_diff, target_prob
from interpret.patterns import attention_patterns, head_scores, induction_scores
from interpret.sae import SparseAutoencoder, sae_loss, sae_metrics, train_sae

__version__ = "0.2.0"
__all__ = ["POINTS", "ActivationCache", "Anatomy", "PatchResult", "SparseAutoencoder", "activation_patching",
           "anatomy", "attention_patterns", "capture", "causal_trace", "head_scores", "induction_scores", "intervene",
           "kl_to_final", "lens_report", "logit_diff", "logit_lens", "sae_loss", "sae_metrics", "target_prob",
           "train_sae"]
