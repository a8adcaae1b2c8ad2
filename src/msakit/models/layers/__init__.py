"""Shared building blocks: masked pooling, the masked attention block and encoder, positions."""

from msakit.models.layers.attention import AttentionBlock, AttentionEncoder, MaskedAttention
from msakit.models.layers.common import PositionalEncoding, masked_mean, mlp, window_mean

__all__ = [
    "AttentionBlock",
    "AttentionEncoder",
    "MaskedAttention",
    "PositionalEncoding",
    "masked_mean",
    "mlp",
    "window_mean",
]
