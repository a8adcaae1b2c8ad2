"""Missing-data and noise protocols (see ``base.py`` for the contract, ``protocols.py`` for
the protocols themselves)."""

from msakit.corrupt.base import PROTOCOLS, Chain, Protocol, parse_protocol
from msakit.corrupt.protocols import (
    Domain,
    Frames,
    MaskProtocol,
    Modality,
    Noise,
    Subset,
    hash_uniform,
    realised_missing_rate,
    sample_keys,
    take_rows,
)

__all__ = [
    "PROTOCOLS", "Chain", "Domain", "Frames", "MaskProtocol", "Modality", "Noise", "Protocol",
    "Subset", "hash_uniform", "parse_protocol", "realised_missing_rate", "sample_keys", "take_rows",
]
