"""Logging backends of :class:`viz.session.VizSession`, each a plugin in the ``lmstack.viz_backends`` group.

``csv`` and ``jsonl`` are append-only line files (:mod:`viz.backends.linefile`), ``tensorboard`` writes event files
through ``torch.utils.tensorboard``, ``wandb`` logs an offline (by default) Weights & Biases run. The contract every
backend meets is :class:`viz.backends.base.Backend`.
"""
