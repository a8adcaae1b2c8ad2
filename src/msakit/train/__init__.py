"""The training engine and the ``train`` entry point.

``msakit.train(...)`` trains (this package is callable), and ``import msakit.train.engine``
reaches the engine module: the function does not shadow the package.
"""

import sys
import types

from msakit.train.api import summarize, train
from msakit.train.engine import TrainConfig, evaluate_model, fit_seed, load_run_model, predict

__all__ = ["TrainConfig", "evaluate_model", "fit_seed", "load_run_model", "predict", "summarize", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
