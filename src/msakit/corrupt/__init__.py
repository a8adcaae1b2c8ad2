"""Missing-data and noise protocols (see ``base.py`` for the contract, ``protocols.py`` for
the protocols themselves)."""

from msakit.corrupt.base import PROTOCOLS, Chain, Protocol, parse_protocol
from msakit.corrupt.protocols import (
    Domain,
    DomainSplit,
    Frames,
    MaskProtocol,
    Modality,
    Noise,
    Subset,
    hash_uniform,
    parse_domain,
    realised_missing_rate,
    sample_keys,
    split_domain,
    take_rows,
)

__all__ = [
    "PROTOCOLS", "Chain", "Domain", "DomainSplit", "Frames", "MaskProtocol", "Modality", "Noise",
    "Protocol", "Subset", "hash_uniform", "parse_domain", "parse_protocol",
    "realised_missing_rate", "sample_keys", "split_domain", "take_rows",
]
