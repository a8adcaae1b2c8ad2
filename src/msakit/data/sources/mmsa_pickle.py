"""MMSA feature pickles (``aligned_50.pkl``, ``unaligned_50.pkl``, ``unaligned_39.pkl``).

Layout (MOSI, MOSEI, SIMS, SIMSv2 as released with MMSA, github thuiar/MMSA): a dict with
``train``/``valid``/``test``, each a dict of arrays over N samples:

- ``text`` (N, L_t, 768) BERT features; ``text_bert`` (N, 3, L_t): token ids, attention mask,
  segment ids; ``raw_text``; ``id``;
- ``audio`` (N, L_a, D_a) and ``vision`` (N, L_v, D_v), with ``audio_lengths`` /
  ``vision_lengths`` in the unaligned files;
- ``regression_labels`` (N,), and on SIMS/SIMSv2 ``regression_labels_T/A/V`` (-> ``y_m``).

Lengths: text from the ``text_bert`` mask when present; audio/vision from ``*_lengths`` when
present; otherwise a modality's length is the index after its last non-zero step (trailing
all-zero steps are padding). -inf/NaN (MOSI audio holds -inf) become 0, counted in one warning.

Unpickling can run arbitrary code, so files are read with :class:`RestrictedUnpickler`, which
admits only numpy array/dtype/scalar reconstruction and plain containers; anything else is
refused before it is called.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import warnings
from pathlib import Path

import numpy as np

from msakit.data.batch import MODALITIES, SplitData
from msakit.data.catalog import pinned, register_summary
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DatasetEntry, register_dataset, register_path_loader

_np_core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
_MULTIARRAY = _np_core.multiarray
_NUMERIC = _np_core.numeric

_SAFE_GLOBALS: dict[tuple[str, str], object] = {}
for _pkg in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_pkg}.multiarray", "_reconstruct")] = _MULTIARRAY._reconstruct
    _SAFE_GLOBALS[(f"{_pkg}.multiarray", "scalar")] = _MULTIARRAY.scalar
    _SAFE_GLOBALS[(f"{_pkg}.numeric", "_frombuffer")] = _NUMERIC._frombuffer
_SAFE_GLOBALS.update({
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes (array buffers)
    ("collections", "OrderedDict"): collections.OrderedDict,
})
for _b in (set, frozenset, complex, bytearray):  # protocol <= 2 writes Python 2's module name
    _SAFE_GLOBALS[("builtins", _b.__name__)] = _SAFE_GLOBALS[("__builtin__", _b.__name__)] = _b


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list; nothing from it was called."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy array reconstruction and plain containers."""

    def __init__(self, file, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused global {module}.{name}: an MMSA pickle may hold only "
                f"numpy arrays, plain containers, strings and numbers (loading other objects "
                f"can run code); nothing from this file was executed"
            )
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}")


def safe_load_pickle(path: str | Path) -> object:
    """Load a pickle with :class:`RestrictedUnpickler` (numpy arrays and containers only)."""
    path = Path(path)
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path)).load()


def clean_nonfinite(arr: np.ndarray) -> int:
    """Replace -inf/+inf/NaN in ``arr`` by 0 in place; return how many were replaced."""
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n:
        arr[bad] = 0
    return n


def warn_nonfinite(source: str, counts: dict[str, int]) -> None:
    """One warning listing ``{"split/modality": count}`` of replaced values, if any."""
    counts = {k: v for k, v in counts.items() if v}
    if counts:
        detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
        warnings.warn(
            f"{source}: replaced {sum(counts.values())} non-finite feature values (-inf/NaN) "
            f"by 0 ({detail})",
            RuntimeWarning,
            stacklevel=3,
        )


def trailing_lengths(arr: np.ndarray) -> np.ndarray:
    """(N, L, D) -> (N,) index after the last step with any non-zero value (0 if none)."""
    nz = np.abs(arr).sum(axis=2) > 0  # (N, L)
    last = arr.shape[1] - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(axis=1), last, 0).astype(np.int64)


def _split_data(d: dict, split: str, src: str, counts: dict[str, int]) -> SplitData:
    if not isinstance(d, dict):
        raise ValueError(f"{src}: split {split!r} must be a dict of arrays, got {type(d).__name__}")
    if "regression_labels" not in d:
        raise ValueError(
            f"{src}: split {split!r} has no 'regression_labels' (keys: {sorted(d)}); "
            f"expected an MMSA feature pickle"
        )
    y = np.asarray(d["regression_labels"], dtype=np.float32).reshape(-1)
    n = len(y)
    text_ids = text_mask = None
    if "text_bert" in d:
        tb = np.asarray(d["text_bert"])
        if tb.ndim != 3 or tb.shape[0] != n or tb.shape[1] < 2:
            raise ValueError(f"{src}: {split}.text_bert must be (N={n}, 3, L), got {tb.shape}")
        text_ids, text_mask = tb[:, 0].astype(np.int64), tb[:, 1] > 0
    x, lengths = {}, {}
    for m in MODALITIES:
        if m not in d:
            continue
        arr = np.array(d[m], dtype=np.float32)  # a copy: cleaned in place below
        if arr.ndim == 2:  # one vector per sample
            arr = arr[:, None, :]
        if arr.ndim != 3 or arr.shape[0] != n:
            raise ValueError(f"{src}: {split}.{m} must be (N={n}, L, D), got {arr.shape}")
        counts[f"{split}/{m}"] = clean_nonfinite(arr)
        L = arr.shape[1]
        if f"{m}_lengths" in d:
            lens = np.asarray(d[f"{m}_lengths"], dtype=np.int64).reshape(-1)
        elif m == "text" and text_mask is not None and text_mask.shape[1] == L:
            lens = text_mask.sum(axis=1)
        else:
            lens = trailing_lengths(arr)
        if lens.shape != (n,):
            raise ValueError(f"{src}: {split}.{m}_lengths must have N={n} entries, got {lens.shape}")
        x[m], lengths[m] = arr, np.clip(lens, 0, L)
    if not x:
        raise ValueError(f"{src}: split {split!r} has none of the feature keys {MODALITIES}")
    y_m = {
        m: np.asarray(d[f"regression_labels_{k}"], dtype=np.float32).reshape(-1)
        for m, k in zip(MODALITIES, "TAV", strict=True)
        if f"regression_labels_{k}" in d
    }
    ids = [str(i) for i in d["id"]] if "id" in d else [f"{split}_{i}" for i in range(n)]
    raw = [str(t) for t in d["raw_text"]] if "raw_text" in d else None
    return SplitData(
        x=x, lengths=lengths, y=y, ids=ids, y_m=y_m or None,
        text_ids=text_ids, text_ids_mask=text_mask, raw_text=raw,
    )


def load_mmsa_pickle(
    path: str | Path, label_scale: str | None = None, name: str | None = None, **_: object
) -> MSADataset:
    """Read an MMSA feature pickle into an MSADataset.

    label_scale: "mosi" ([-3, 3]) or "sims" ([-1, 1]); by default "sims" when every label lies
    in [-1, 1] and the file looks like SIMS (per-modality labels, or "sims" in its path).
    name: default the file's absolute path, so a saved run can load it again.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMSA pickle not found: {path}")
    data = safe_load_pickle(path)
    if not isinstance(data, dict) or any(s not in data for s in SPLITS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a dict with keys {SPLITS}, got {keys}")
    counts: dict[str, int] = {}
    splits = {s: _split_data(data[s], s, str(path), counts) for s in SPLITS}
    warn_nonfinite(str(path), counts)
    if label_scale is None:
        in_unit = all(np.abs(sd.y).max(initial=0) <= 1 for sd in splits.values())
        sims_like = splits["train"].y_m is not None or "sims" in str(path).lower()
        label_scale = "sims" if in_unit and sims_like else "mosi"
    return MSADataset(
        name=name or str(path.resolve()),  # a name load_dataset resolves again (msakit eval)
        splits=splits,
        label_scale=label_scale,
        info={
            "format": "mmsa-pickle",
            "source": str(path),
            "nonfinite_replaced": {k: v for k, v in counts.items() if v},
        },
    )


register_path_loader(lambda p: p.is_file() and p.suffix == ".pkl", load_mmsa_pickle)

# MMSA's released features, where MMSA's configs expect them under its dataset root.
# Their SHA-256 are not pinned (msakit has no copy to hash).
_MMSA = {
    "mmsa-mosi": ("MOSI/Processed/unaligned_50.pkl", {"text": 768, "audio": 5, "vision": 20},
                  {"train": 1284, "valid": 229, "test": 686}),
    "mmsa-mosi-aligned": ("MOSI/Processed/aligned_50.pkl", {"text": 768, "audio": 5, "vision": 20},
                          {"train": 1284, "valid": 229, "test": 686}),
    "mmsa-mosei": ("MOSEI/Processed/unaligned_50.pkl", {"text": 768, "audio": 74, "vision": 35},
                   {"train": 16326, "valid": 1871, "test": 4659}),
    "mmsa-mosei-aligned": ("MOSEI/Processed/aligned_50.pkl",
                           {"text": 768, "audio": 74, "vision": 35},
                           {"train": 16326, "valid": 1871, "test": 4659}),
    "mmsa-sims": ("SIMS/Processed/unaligned_39.pkl", {"text": 768, "audio": 33, "vision": 709},
                  {"train": 1368, "valid": 456, "test": 457}),
}


def _register_mmsa(name: str, rel: str, dims: dict, sizes: dict) -> None:
    from msakit.data.catalog import require_files

    def loader(root: Path, verify: bool = True, **kw) -> MSADataset:
        root = require_files(name, root, verify)
        return load_mmsa_pickle(root / rel, name=name, **kw)

    register_dataset(DatasetEntry(
        name=name, loader=loader, files=pinned(rel),
        description=f"MMSA processed features ({rel}); BERT text, COVAREP/Facet-style A/V",
        source="the MMSA dataset release (links in the README of github.com/thuiar/MMSA)",
    ))
    register_summary(name, lambda root: {"dims": dims, "sizes": sizes})


for _name, (_rel, _dims, _sizes) in _MMSA.items():
    _register_mmsa(_name, _rel, _dims, _sizes)
