"""Missing-data and noise protocols (see ``base.py`` for the contract)."""

from msakit.corrupt.base import PROTOCOLS, Chain, Protocol, parse_protocol

__all__ = ["PROTOCOLS", "Chain", "Protocol", "parse_protocol"]
