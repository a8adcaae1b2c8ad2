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
refused before it is called, as is any array whose declared size exceeds the file's (checked
before numpy allocates it) and any object array not of strings or structured dtype. Every bad
file gives one :class:`~msakit.errors.DataError` line naming it.
"""

from __future__ import annotations

import codecs
import collections
import functools
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np

from msakit.data.batch import MODALITIES, SplitData
from msakit.data.catalog import pinned, register_summary
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DatasetEntry, register_dataset, register_path_loader
from msakit.errors import DataError, MissingDataError, first_line

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
for _b in (set, frozenset, complex, bytes, bytearray):  # protocol <= 2: Python 2's module name
    _SAFE_GLOBALS[("builtins", _b.__name__)] = _SAFE_GLOBALS[("__builtin__", _b.__name__)] = _b


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list, or for an array its file cannot
    hold; nothing from it was called or allocated."""


BERT_UNK_ID = 100  # MMSA's text_bert holds bert-base-uncased ids
_ARRAY_KINDS = "biufcUSO"  # object arrays only of strings (MMSA's ids, raw_text); no structs


class _LoadedArray(np.ndarray):
    """What a restricted load builds arrays as: each array's state (shape, dtype) is checked
    before numpy allocates it. Subclassed per load with ``_guard``; viewed back as ndarray."""

    _guard: RestrictedUnpickler

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError(f"{cls._guard.source}: refused a direct numpy.ndarray(...) call")

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"{self._guard.source}: malformed numpy array state")
        shape, dtype, _, raw = state[-4:]
        self._guard.check(shape, dtype)
        if np.dtype(dtype).hasobject:
            items = raw if isinstance(raw, list) else [raw]
            other = [v for v in items if not isinstance(v, str | bytes)]
            if other:
                raise UnsafePickleError(
                    f"{self._guard.source}: refused an object array holding "
                    f"{type(other[0]).__name__}; only numeric arrays or arrays of strings are "
                    f"allowed"
                )
        super().__setstate__(state)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy array reconstruction and plain containers, and
    refuses any array or buffer larger than ``max_bytes`` (default: the file's size) before
    allocating it, and object (other than strings) or structured dtypes."""

    def __init__(self, file, source: str = "<pickle>", max_bytes: int | None = None) -> None:
        super().__init__(file)
        self.source = source
        if max_bytes is None and getattr(file, "seekable", lambda: False)():
            pos = file.tell()
            max_bytes = file.seek(0, os.SEEK_END)
            file.seek(pos)
        self.max_bytes = max_bytes
        self.array_type = type("ndarray", (_LoadedArray,), {"_guard": self})

    def check(self, shape, dtype) -> None:
        """Refuse a declared array the file cannot hold, or an unsupported dtype."""
        try:
            dt = np.dtype(dtype)
            dims = [int(d) for d in (shape if isinstance(shape, tuple | list) else (shape,))]
        except (TypeError, ValueError) as e:
            raise UnsafePickleError(f"{self.source}: malformed numpy array header ({e})") from None
        if dt.kind not in _ARRAY_KINDS or dt.names is not None or dt.subdtype is not None:
            raise UnsafePickleError(
                f"{self.source}: refused an array of dtype {dt} (structured/void/other); only "
                f"numeric or string arrays are allowed"
            )
        nbytes = math.prod(dims) * dt.itemsize
        if min(dims, default=0) < 0 or (self.max_bytes is not None and nbytes > self.max_bytes):
            raise UnsafePickleError(
                f"{self.source}: refused an array of shape {tuple(dims)} and dtype {dt} "
                f"({nbytes} bytes): larger than the whole file ({self.max_bytes} bytes) can hold"
            )

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not self.array_type:
            raise UnsafePickleError(f"{self.source}: refused _reconstruct of {subtype!r}")
        self.check(shape, dtype)
        return _MULTIARRAY._reconstruct(subtype, shape, dtype)

    def _frombuffer(self, buf, dtype, shape, *args):
        self.check(shape, dtype)
        return _NUMERIC._frombuffer(buf, dtype, shape, *args)

    def _scalar(self, dtype, *args):
        self.check((), dtype)
        return _MULTIARRAY.scalar(dtype, *args)

    def _bytes(self, kind: type, *args):
        if args and not isinstance(args[0], str | bytes | bytearray):  # bytes(n) allocates n
            raise UnsafePickleError(
                f"{self.source}: refused {kind.__name__}({type(args[0]).__name__})")
        return kind(*args)

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"{self.source}: refused _codecs.encode(..., {encoding!r})")
        return codecs.encode(obj, encoding, errors)

    def find_class(self, module: str, name: str):
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused global {module}.{name}: an MMSA pickle may hold only "
                f"numpy arrays, plain containers, strings and numbers (loading other objects "
                f"can run code); nothing from this file was executed"
            )
        guarded = {_MULTIARRAY._reconstruct: self._reconstruct, np.ndarray: self.array_type,
                   _NUMERIC._frombuffer: self._frombuffer, _MULTIARRAY.scalar: self._scalar,
                   bytes: functools.partial(self._bytes, bytes),
                   bytearray: functools.partial(self._bytes, bytearray),
                   codecs.encode: self._encode}
        return guarded.get(obj, obj)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}")


def _plain(obj):
    """Loaded containers with every guarded array viewed back as a plain ndarray."""
    if isinstance(obj, _LoadedArray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _plain(v)
    elif isinstance(obj, list):
        obj[:] = [_plain(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def safe_load_pickle(path: str | Path) -> object:
    """Load a pickle with :class:`RestrictedUnpickler` (numpy arrays and containers only).

    Raises MissingDataError, or DataError (one line naming the file) for anything else wrong:
    empty, truncated, not a pickle, refused globals, arrays larger than the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"pickle not found: {path}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise DataError(f"{path}: empty file; expected a pickle")
        try:
            return _plain(RestrictedUnpickler(f, source=str(path)).load())
        except DataError:
            raise
        except Exception as e:  # anything a hostile or broken byte stream can raise
            msg = first_line(e)
            what = ("truncated (the pickle stream ends early)"
                    if isinstance(e, EOFError) or "truncated" in msg else "not a valid pickle")
            raise DataError(f"{path}: {what} ({type(e).__name__}: {msg})") from None


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


def _array(d: dict, key: str, where: str, dtype=None, copy: bool = False) -> np.ndarray:
    try:
        return np.array(d[key], dtype=dtype, copy=copy or None)
    except (TypeError, ValueError) as e:
        msg = first_line(e)
        raise DataError(f"{where}.{key}: expected a numeric array ({msg})") from None


def _split_data(d: dict, split: str, src: str, counts: dict[str, int]) -> SplitData:
    where = f"{src}: {split}"
    if not isinstance(d, dict):
        raise DataError(f"{src}: split {split!r} must be a dict of arrays, got {type(d).__name__}")
    if "regression_labels" not in d:
        raise DataError(
            f"{src}: split {split!r} has no 'regression_labels' (keys: {sorted(map(str, d))}); "
            f"expected an MMSA feature pickle"
        )
    y = _array(d, "regression_labels", where, np.float32).reshape(-1)
    n = len(y)
    text_ids = text_mask = None
    if "text_bert" in d:
        tb = _array(d, "text_bert", where, np.float64)
        if tb.ndim != 3 or tb.shape[0] != n or tb.shape[1] < 2:
            raise DataError(f"{where}.text_bert must be (N={n}, 3, L), got {tb.shape}")
        text_ids, text_mask = tb[:, 0].astype(np.int64), tb[:, 1] > 0
    x, lengths = {}, {}
    for m in MODALITIES:
        if m not in d:
            continue
        arr = _array(d, m, where, np.float32, copy=True)  # a copy: cleaned in place below
        if arr.ndim == 2:  # one vector per sample
            arr = arr[:, None, :]
        if arr.ndim != 3 or arr.shape[0] != n:
            raise DataError(f"{where}.{m} must be (N={n}, L, D), got {arr.shape}")
        counts[f"{split}/{m}"] = clean_nonfinite(arr)
        L = arr.shape[1]
        if f"{m}_lengths" in d:
            lens = _array(d, f"{m}_lengths", where, np.float64).reshape(-1)
        elif m == "text" and text_mask is not None and text_mask.shape[1] == L:
            lens = text_mask.sum(axis=1)
        else:
            lens = trailing_lengths(arr)
        if lens.shape != (n,):
            raise DataError(f"{where}.{m}_lengths must have N={n} entries, got {lens.shape}")
        x[m], lengths[m] = arr, lens
    if not x:
        raise DataError(f"{src}: split {split!r} has none of the feature keys {MODALITIES}")
    y_m = {
        m: _array(d, f"regression_labels_{k}", where, np.float32).reshape(-1)
        for m, k in zip(MODALITIES, "TAV", strict=True)
        if f"regression_labels_{k}" in d
    }
    ids = [str(i) for i in d["id"]] if "id" in d else [f"{split}_{i}" for i in range(n)]
    raw = [str(t) for t in d["raw_text"]] if "raw_text" in d else None
    try:
        return SplitData(
            x=x, lengths=lengths, y=y, ids=ids, y_m=y_m or None,
            text_ids=text_ids, text_ids_mask=text_mask, raw_text=raw,
            text_unk_id=None if text_ids is None else BERT_UNK_ID,
        )
    except DataError as e:
        raise DataError(f"{where}: {str(e).removeprefix('SplitData: ')}") from None


def load_mmsa_pickle(
    path: str | Path, label_scale: str | None = None, name: str | None = None, **_: object
) -> MSADataset:
    """Read an MMSA feature pickle into an MSADataset.

    label_scale: "mosi" ([-3, 3]) or "sims" ([-1, 1]); by default "sims" when every label lies
    in [-1, 1] and the file looks like SIMS (per-modality labels, or "sims" in its path).
    name: default the file's absolute path, so a saved run can load it again.
    Raises MissingDataError, or DataError naming the file for anything malformed or unsafe.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"MMSA pickle not found: {path}")
    data = safe_load_pickle(path)
    if not isinstance(data, dict) or any(s not in data for s in SPLITS):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected a dict with keys {SPLITS}, got {keys}")
    counts: dict[str, int] = {}
    splits = {s: _split_data(data[s], s, str(path), counts) for s in SPLITS}
    warn_nonfinite(str(path), counts)
    if label_scale is None:
        in_unit = all(np.abs(sd.y).max(initial=0) <= 1 for sd in splits.values())
        sims_like = splits["train"].y_m is not None or "sims" in str(path).lower()
        label_scale = "sims" if in_unit and sims_like else "mosi"
    name = name or str(path.resolve())  # a name load_dataset resolves again (msakit eval)
    try:
        return MSADataset(
            name=name,
            splits=splits,
            label_scale=label_scale,
            info={
                "format": "mmsa-pickle",
                "source": str(path),
                "nonfinite_replaced": {k: v for k, v in counts.items() if v},
            },
        )
    except DataError as e:
        raise DataError(str(e) if name == str(path.resolve()) else f"{path}: {e}") from None


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
