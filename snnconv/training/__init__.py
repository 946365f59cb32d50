"""The training loop shared by every task (classifier, detector); see :mod:`snnconv.training.loop`."""
from .loop import CHECKPOINT_NAME, DivergenceWatch, TrainingTask, optimizer_tensors, restore_optimizer, run_training

__all__ = ["CHECKPOINT_NAME", "DivergenceWatch", "TrainingTask", "optimizer_tensors", "restore_optimizer", "run_training"]
