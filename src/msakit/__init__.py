"""msakit: multimodal sentiment analysis, every model under every missing-data protocol.

The top-level names are imported on first use, so ``msakit --help`` and ``msakit models``
start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Batch": "msakit.data",
    "MSADataset": "msakit.data",
    "SplitData": "msakit.data",
    "load_dataset": "msakit.data",
    "create_model": "msakit.models",
    "metrics": None,  # the module msakit.metrics
    "train": None,  # the callable package msakit.train
}

__all__ = ["Batch", "MSADataset", "SplitData", "__version__", "create_model", "load_dataset", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'msakit' has no attribute {name!r}")
    mod = _LAZY[name]
    value = importlib.import_module(f"msakit.{name}") if mod is None else getattr(
        importlib.import_module(mod), name
    )
    globals()[name] = value
    return value
