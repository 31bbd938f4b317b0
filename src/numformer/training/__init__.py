"""Training a GPT: the settings of a run (config), the loop (trainer), and what a run writes
beside its checkpoints (metrics). `numformer train` (numformer.commands.train) is its command."""

from numformer.training.config import TrainConfig
from numformer.training.trainer import Trainer, run

__all__ = ["TrainConfig", "Trainer", "run"]
