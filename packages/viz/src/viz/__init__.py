"""lmstack viz: metrics logging to CSV/JSONL/TensorBoard/W&B, activation probes, profiler traces, curve plots.

``from viz.session import VizSession``; ``VizSession(cfg.viz)`` is the entry point. Importing ``viz`` imports
nothing heavy: torch, tensorboard, matplotlib and wandb load with the modules that use them.
"""

__version__ = "0.1.1"
