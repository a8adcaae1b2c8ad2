"""A dataset is three :class:`SplitData` plus what evaluation needs to know about them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from msakit.data.batch import Batch, SplitData, collate

SPLITS = ("train", "valid", "test")


@dataclass
class MSADataset:
    """splits: ``{"train", "valid", "test"}`` -> SplitData, all with the same modalities/dims.

    label_scale: ``"mosi"`` (labels in [-3, 3]) or ``"sims"`` (labels in [-1, 1]); picks the
    metric set. oracle: for synthetic data, ``oracle(batch) -> (B,) predictions`` given exactly
    what the batch observes.
    """

    name: str
    splits: dict[str, SplitData]
    label_scale: str = "mosi"
    oracle: Callable[[Batch], np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset {self.name!r}: missing splits {missing}")
        dims = self.splits["train"].dims
        for s, sd in self.splits.items():
            if sd.dims != dims:
                raise ValueError(
                    f"dataset {self.name!r}: split {s!r} has dims {sd.dims}, train has {dims}"
                )
        if self.label_scale not in ("mosi", "sims"):
            raise ValueError(f"label_scale must be 'mosi' or 'sims', got {self.label_scale!r}")

    @property
    def dims(self) -> dict[str, int]:
        return self.splits["train"].dims

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.splits["train"].modalities

    @property
    def present_modalities(self) -> tuple[str, ...]:
        """Modalities observed for at least one training sample."""
        tr = self.splits["train"]
        return tuple(m for m in tr.modalities if tr.present[m].any())

    def sizes(self) -> dict[str, int]:
        return {s: len(sd) for s, sd in self.splits.items()}

    def batches(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """Iterate Batches over a split; evaluation never shuffles."""
        sd = self.splits[split]
        order = np.arange(len(sd))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(sd))
        for i in range(0, len(sd), batch_size):
            yield collate(sd, order[i : i + batch_size])
