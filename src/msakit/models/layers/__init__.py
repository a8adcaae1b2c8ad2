"""Shared building blocks: masked pooling, the masked attention block and encoder, positions,
gradient reversal."""

from msakit.models.layers.attention import (
    AttentionBlock,
    AttentionEncoder,
    HyperModalityLayer,
    MaskedAttention,
)
from msakit.models.layers.common import (
    PositionalEncoding,
    grad_reverse,
    masked_mean,
    mlp,
    observed_first,
    pack_observed,
    rnn_last,
    window_mean,
)

__all__ = [
    "AttentionBlock",
    "AttentionEncoder",
    "HyperModalityLayer",
    "MaskedAttention",
    "PositionalEncoding",
    "grad_reverse",
    "masked_mean",
    "mlp",
    "observed_first",
    "pack_observed",
    "rnn_last",
    "window_mean",
]
