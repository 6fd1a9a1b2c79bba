"""Engine: the training loop, schedules, optimizers, checkpoints and run directories."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .trainer import TrainingError, TrainResult, build_run, pretrain

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "TrainingError", "TrainResult", "build_run",
           "pretrain"]
