"""Engine: the training loop, schedules, optimizers, checkpoints and run directories."""
from .build import Built, build_run, resolve_device
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .trainer import TrainingError, TrainResult, pretrain

__all__ = ["Built", "CheckpointError", "load_checkpoint", "save_checkpoint", "TrainingError", "TrainResult",
           "build_run", "pretrain", "resolve_device"]
