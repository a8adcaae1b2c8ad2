"""A dataset is three :class:`SplitData` plus what evaluation needs to know about them.

Constructing an :class:`MSADataset` validates it (every reader benefits): no empty split,
finite labels within the label range (integer class indices for classification), and sample
ids unique within and across splits. Each failure is a :class:`~msakit.errors.DataError`
naming the dataset, split, field and first offending index/id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from msakit.data.batch import Batch, SplitData
from msakit.errors import DataError

SPLITS = ("train", "valid", "test")
LABEL_RANGES = {"mosi": (-3.0, 3.0), "sims": (-1.0, 1.0)}
_TOL = 1e-5  # float32 labels stored at the range edges


def check_labels(
    where: str,
    y: np.ndarray,
    ids: Sequence[str],
    label_range: tuple[float, float],
    classes: Sequence[str] | None = None,
    field_name: str = "y",
) -> None:
    """Raise DataError unless ``y`` is finite and within ``label_range`` (or holds integer
    class indices 0..K-1 when ``classes`` is given). ``where``: "dataset 'x': split 'train'"."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)

    def fail(mask: np.ndarray, what: str) -> None:
        i = int(np.flatnonzero(mask)[0])
        sid = f" (id {ids[i]!r})" if i < len(ids) else ""
        raise DataError(
            f"{where} field {field_name!r}: {int(mask.sum())} label(s) {what}; the first is "
            f"{float(y[i])!r} at index {i}{sid}"
        )

    bad = ~np.isfinite(y)
    if bad.any():
        fail(bad, "are not finite (NaN or inf)")
    if classes is not None:
        k = len(classes)
        bad = (y != np.round(y)) | (y < 0) | (y >= k)
        if bad.any():
            fail(bad, f"are not class indices 0..{k - 1} ({k} classes)")
        return
    lo, hi = label_range
    bad = (y < lo - _TOL) | (y > hi + _TOL)
    if bad.any():
        fail(bad, f"lie outside the label range [{lo:g}, {hi:g}]")


def check_ids(dataset: str, ids: dict[str, Sequence[str]]) -> None:
    """Raise DataError if a sample id repeats within a split or appears in two splits."""
    seen: dict[str, tuple[str, int]] = {}
    for split, split_ids in ids.items():
        for i, sid in enumerate(split_ids):
            if sid in seen:
                s0, i0 = seen[sid]
                where = (f"twice in split {split!r}" if s0 == split
                         else f"in splits {s0!r} and {split!r}")
                raise DataError(
                    f"dataset {dataset!r}: sample id {sid!r} appears {where} (index {i0} and "
                    f"{i}); ids must be unique across train/valid/test (a repeated sample leaks "
                    f"between splits)"
                )
            seen[sid] = (split, i)


@dataclass(repr=False)
class MSADataset:
    """splits: ``{"train", "valid", "test"}`` -> SplitData, all with the same modalities/dims.

    label_scale: ``"mosi"`` (labels in [-3, 3]), ``"sims"`` ([-1, 1]) or ``"range"`` (generic
    regression on ``label_range``, then required); picks the metric set. classes: class names
    for a K-class task (``y`` then holds indices 0..K-1). standardized: the features are
    already standardised. oracle: for synthetic data, ``oracle(batch) -> (B,) predictions``
    given exactly what the batch observes.
    """

    name: str
    splits: dict[str, SplitData]
    label_scale: str = "mosi"
    oracle: Callable[[Batch], np.ndarray] | None = None
    info: dict = field(default_factory=dict)
    label_range: tuple[float, float] | None = None
    classes: tuple[str, ...] | None = None
    standardized: bool = False

    def __post_init__(self) -> None:
        who = f"dataset {self.name!r}"
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise DataError(f"{who}: missing splits {missing}; expected {SPLITS}")
        dims = self.splits["train"].dims
        for s, sd in self.splits.items():
            if sd.dims != dims:
                raise DataError(f"{who}: split {s!r} has dims {sd.dims}, train has {dims}")
            if len(sd) == 0:
                raise DataError(f"{who}: split {s!r} is empty; train, valid and test each "
                                f"need at least one sample")
        if self.label_scale not in (*LABEL_RANGES, "range"):
            raise DataError(f"{who}: label_scale must be 'mosi', 'sims' or 'range', got "
                            f"{self.label_scale!r}")
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise DataError(f"{who}: classes must be at least 2 distinct names, got "
                                f"{self.classes}")
        if self.label_range is None:
            if self.classes is not None:
                self.label_range = (0.0, float(len(self.classes) - 1))
            elif self.label_scale == "range":
                raise DataError(f"{who}: label_scale 'range' needs label_range=(low, high)")
            else:
                self.label_range = LABEL_RANGES[self.label_scale]
        lo, hi = (float(v) for v in self.label_range)
        if not (np.isfinite([lo, hi]).all() and lo < hi):
            raise DataError(f"{who}: label_range must be finite (low, high) with low < high, "
                            f"got {self.label_range}")
        self.label_range = (lo, hi)
        for s, sd in self.splits.items():
            check_labels(f"{who}: split {s!r}", sd.y, sd.ids, self.label_range, self.classes)
            for m, ym in (sd.y_m or {}).items():
                check_labels(f"{who}: split {s!r}", ym, sd.ids, self.label_range, self.classes,
                             field_name=f"y_m[{m!r}]")
        check_ids(self.name, {s: sd.ids for s, sd in self.splits.items()})

    @property
    def task(self) -> str:
        return "classification" if self.classes else "regression"

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

    def content_hash(self) -> str:
        """SHA-256 hex of every split's ids, labels, lengths, step masks, present flags,
        features (and text ids, transcripts, prompt texts, per-modality labels, domains) and
        the label scale/range/classes; cached."""
        cached = self.__dict__.get("_content_hash")
        if cached is not None:
            return cached
        h = hashlib.sha256()

        def put(tag: str, a) -> None:
            a = np.ascontiguousarray(a)
            h.update(f"{tag}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a)  # the raw bytes, no copy

        h.update(json.dumps([self.label_scale, self.label_range, self.classes]).encode())
        for s in sorted(self.splits):
            sd = self.splits[s]
            h.update(f"split|{s}|".encode())
            h.update(json.dumps(sd.ids).encode())
            put("y", sd.y)
            for name in ("x", "lengths", "present", "y_m", "mask"):
                for m, a in sorted((getattr(sd, name) or {}).items()):
                    put(f"{name}[{m}]", a)
            for name in ("text_ids", "text_ids_mask", "domain"):
                if getattr(sd, name) is not None:
                    put(name, getattr(sd, name))
            if sd.raw_text is not None:  # what a text encoder reads
                h.update(b"raw_text|" + json.dumps(sd.raw_text).encode())
            if sd.prompt_text is not None:  # cue texts (MMSLF's teacher reads them)
                h.update(b"prompt_text|" + json.dumps(sd.prompt_text).encode())
        self.__dict__["_content_hash"] = h.hexdigest()
        return self.__dict__["_content_hash"]

    def __repr__(self) -> str:
        mods = ", ".join(f"{m} {d}" for m, d in self.dims.items())
        sizes = "/".join(str(len(self.splits[s])) for s in SPLITS)
        task = self.task if self.classes is None else f"{self.task}, {len(self.classes)} classes"
        return f"MSADataset({self.name!r}, {task}, {mods}, train/valid/test {sizes})"


def scale_of(ds: MSADataset) -> str:
    """The scale a dataset's metrics are on, e.g. "mosi [-3, 3]" or "classes [...]"."""
    if ds.classes:
        return f"classes {list(ds.classes)}"
    lo, hi = ds.label_range
    return f"{ds.label_scale} [{lo:g}, {hi:g}]"
