"""Model registry; importing this package registers every built-in model (one file each)."""

import importlib
import pkgutil

from msakit.models.base import MODELS, ModelConfig, MSAModel, Output, create_model, register_model

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "layers") and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["MODELS", "ModelConfig", "MSAModel", "Output", "create_model", "register_model"]
