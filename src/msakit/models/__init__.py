"""Model registry; importing this package registers every built-in model."""

from msakit.models import late_fusion  # noqa: F401
from msakit.models.base import MODELS, ModelConfig, MSAModel, Output, create_model, register_model

__all__ = ["MODELS", "ModelConfig", "MSAModel", "Output", "create_model", "register_model"]
