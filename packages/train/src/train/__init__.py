"""lmstack train: the Trainer (AdamW/SGD/Lion, schedules, mixed precision, gradient accumulation, checkpoints
that resume bit-for-bit) and ``torchrun -m train.run --config cfgs/<run>.yaml``.

    trainer = Trainer(model, cfg, dataloader)   # cfg: RunConfig | TrainConfig | ModelConfig
    loss = trainer.step(batch)                  # one optimizer step -> float
    trainer.fit()                               # the whole run, checkpoints, callbacks
"""

from train.errors import CheckpointError, TrainingError, TrainingInterrupted
from train.optim import Lion, build_optimizer
from train.schedule import build_scheduler, lr_multiplier
from train.trainer import Trainer

__version__ = "0.9.1"

__all__ = ["CheckpointError", "Lion", "Trainer", "TrainingError", "TrainingInterrupted", "build_optimizer",
           "build_scheduler", "lr_multiplier"]
