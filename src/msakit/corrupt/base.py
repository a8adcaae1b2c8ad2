"""The corruption contract: a protocol is a pure, seeded function ``(batch, seed) -> batch``.

It updates ``mask`` / ``present`` and blanks the dropped content; missingness is never hidden
from the masks. ``spec`` strings name a protocol and its level: ``frames:0.3``,
``modality:0.3``, ``subset:la``, ``noise:0.1``, ``frames:random``; ``a+b`` chains two.

Every protocol records what it did in ``batch.corruption`` (a typed
:class:`~msakit.data.batch.Corruption`): the batch before any corruption (set by the first
protocol applied, kept by later ones), so a model may learn to reconstruct clean input (LNLN),
and the realised missing rate ``1 - observed / clean-valid`` per modality. Models read it only
in ``loss``, never in ``forward`` (evaluation must not see clean data), and never import this
package: the record is all they need.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from msakit.data.batch import Batch, Corruption
from msakit.errors import ConfigError
from msakit.registry import Registry


class Protocol:
    """Base class: subclasses set ``name`` and implement ``apply``."""

    name: str = ""

    def __init__(self, level: str) -> None:
        self.level = level

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.level}"

    def apply(self, batch: Batch, seed: int) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: Batch, seed: int = 0) -> Batch:
        if batch.prepared:
            raise ConfigError("corruption must run before the model prepares a batch")
        if batch.corruption is None:
            zero = {m: torch.zeros(batch.size, device=batch.y.device) for m in batch.modalities}
            batch = batch.replace(corruption=Corruption(clean=batch, missing_rate=zero))
        return self.apply(batch, seed)

    def __repr__(self) -> str:
        return f"Protocol({self.spec!r})"


class Chain(Protocol):
    """Several protocols applied in order (``frames:random+modality:0.3``)."""

    name = "chain"

    def __init__(self, parts: list[Protocol]) -> None:
        super().__init__("+".join(p.spec for p in parts))
        self.parts = parts

    @property
    def spec(self) -> str:
        return self.level

    def apply(self, batch: Batch, seed: int) -> Batch:
        for i, p in enumerate(self.parts):
            batch = p.apply(batch, seed * 7919 + i)
        return batch


PROTOCOLS: Registry[Callable[[str], Protocol]] = Registry("protocol")


def parse_protocol(spec: str | None) -> Protocol | None:
    """``"frames:0.3"`` -> a Protocol; ``None`` / ``""`` / ``"none"`` -> None."""
    if spec is None or spec in ("", "none", "clean"):
        return None
    import msakit.corrupt  # noqa: F401  (registers protocols)

    parts = []
    for part in spec.split("+"):
        name, sep, level = part.partition(":")
        if not sep:
            raise ConfigError(
                f"corruption {part!r}: expected NAME:LEVEL such as 'frames:0.3'; "
                f"protocols: {', '.join(PROTOCOLS.names())}"
            )
        parts.append(PROTOCOLS.get(name)(level))
    return parts[0] if len(parts) == 1 else Chain(parts)
