"""Shared building blocks: masked pooling, masked transformer encoders, positional encodings."""

from msakit.models.layers.common import (
    MaskedTransformer,
    PositionalEncoding,
    masked_mean,
    mlp,
)

__all__ = ["MaskedTransformer", "PositionalEncoding", "masked_mean", "mlp"]
