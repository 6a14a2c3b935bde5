"""lmstack eval: metrics (perplexity, token accuracy, bits per byte), lm-eval-harness-style log-likelihood
scoring, an lm-evaluation-harness adapter (``eval.lm_eval_adapter``) and a perf/latency harness (``eval.bench``)."""

__version__ = "0.20.0"
