"""lmstack interpretability: activation capture and patching, the logit lens, causal tracing, sparse autoencoders."""

from interpret.anatomy import Anatomy, anatomy
from interpret.cache import ActivationCache, capture
from interpret.hooks import POINTS, intervene
from interpret.lens import kl_to_final, lens_report, logit_lens
from interpret.patching import PatchResult, activation_patching, causal_trace, logit_diff, target_prob
from interpret.sae import SparseAutoencoder, sae_loss, sae_metrics, train_sae

__version__ = "0.1.0"
__all__ = ["POINTS", "ActivationCache", "Anatomy", "PatchResult", "SparseAutoencoder", "activation_patching",
           "anatomy", "capture", "causal_trace", "intervene", "kl_to_final", "lens_report", "logit_diff",
           "logit_lens", "sae_loss", "sae_metrics", "target_prob", "train_sae"]
