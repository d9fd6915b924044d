"""The shared engine of every method: the trainer, checkpoints, the training step, summaries."""

from labelreg.engine.trainer import TrainResult, as_method, choose_strategy, train

__all__ = ["TrainResult", "train", "as_method", "choose_strategy"]
