"""Training a GPT: the settings of a run (config), the loop that builds the model and steps,
evaluates and saves (loop), the session around it that owns out_dir, resumes, stops on Ctrl-C and
runs under MPI (session), and what a run writes beside its checkpoints (metrics). `numformer
train` (numformer.commands.train) is its command; `run` starts a session."""

from numformer.training.config import TrainConfig
from numformer.training.loop import Trainer
from numformer.training.session import run

__all__ = ["TrainConfig", "Trainer", "run"]
