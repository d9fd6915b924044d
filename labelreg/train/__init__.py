"""Training: the loop, checkpoints and summaries."""

from labelreg.train.loop import TrainResult, build_model_from_config, choose_strategy, train

__all__ = ["TrainResult", "train", "build_model_from_config", "choose_strategy"]
