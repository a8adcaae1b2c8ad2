"""The training engine and the ``train`` entry point."""

from msakit.train.api import summarize, train
from msakit.train.engine import TrainConfig, evaluate_model, fit_seed, load_run_model, predict

__all__ = ["TrainConfig", "evaluate_model", "fit_seed", "load_run_model", "predict", "summarize", "train"]
