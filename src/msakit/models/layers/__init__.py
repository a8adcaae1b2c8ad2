"""Shared building blocks: masked pooling, masked transformer encoders, positional encodings."""

from msakit.models.layers.common import (
    MaskedTransformer,
    PositionalEncoding,
    masked_mean,
    mlp,
    window_mean,
)

__all__ = ["MaskedTransformer", "PositionalEncoding", "masked_mean", "mlp", "window_mean"]
