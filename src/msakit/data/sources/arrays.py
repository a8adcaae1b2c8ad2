"""Plain arrays: a folder of ``.npz`` / ``.h5`` split files, and MFN's HDF5 layout (``mfn-mmmo``).

Plain-array folder (``load_dataset("path/to/folder")``)
-------------------------------------------------------
One file per split: ``train``, ``valid`` (or ``val`` / ``dev``) and ``test``, each ``.npz``
(``numpy.savez``) or ``.h5`` / ``.hdf5`` (top-level datasets); the splits may mix formats.
Each split file holds, for N samples:

- ``text``, ``audio``, ``vision``: float (N, L, D) feature sequences, any subset, at least one
  per folder (a (N, D) array is read as one step per sample, L = 1). L may differ between
  modalities and between splits; D must be the same in every split. A modality missing from
  one split's file is absent for every sample of that split.
- ``lengths_<m>``: optional int (N,), observed steps are ``0 .. lengths_<m>[i] - 1``; or
  ``mask_<m>``: optional bool (N, L), True where a step is observed (gaps allowed). Give at
  most one of the two. Without either, a step whose D values are all exactly 0 is missing.
- ``present_<m>``: optional bool (N,), False where modality m does not exist for a sample at
  all. Default: present when at least one step is observed (so an all-zero sample is absent).
- ``labels``: required, (N,) float for regression, (N,) int class indices 0..K-1 or (N, K)
  one-hot for classification.
- ``ids``: optional (N,) strings (unique within the split; default ``"<split>_<i>"``). In
  ``.npz`` files store them as a fixed-width string array (``np.array(ids, dtype=str)``):
  object arrays are refused (they would need pickle).

Any other key is an error (it is most likely a misspelling, e.g. ``video`` for ``vision``).
An optional ``meta.json`` in the folder may hold ``"label_range": [lo, hi]`` (regression on
that declared range), or ``"classes": ["neg", "neu", "pos"]`` (classification, labels are
indices into this list), ``"standardized": true`` (features are already z-scored),
``"name"`` (a display name, kept in ``info``; the dataset is identified by its folder path, so
a saved run can load it again) and ``"description"``.

Label conventions without ``meta.json``: int or one-hot labels -> classification with classes
``"0" .. "K-1"`` (K = the largest index + 1 over all splits, or the one-hot width); float
labels -> regression, with label_scale ``"mosi"`` (range [-3, 3], MOSI metrics) when every
label of every split lies in [-3, 3] and some label is negative, ``"sims"`` ([-1, 1]) when
additionally every label lies in [-1, 1], and otherwise ``"range"`` with the range observed
over all three splits (min, max: every label must lie in the dataset's range); declare the
range in ``meta.json`` whenever it is known (e.g. ratings 1-5), since the observed one may be
narrower than the scale. Labels outside a declared range are an error.

MFN HDF5 folder (github pliang279/MFN, ``new_data/<dataset>/``)
---------------------------------------------------------------
``{audio,video,text_emb}_{train,valid,test}.h5`` each with one dataset ``d1`` (N, L, D), any
of the three modalities may be absent (audio -> ``audio``, video -> ``vision``, text_emb ->
``text``), and ``y_{train,valid,test}.h5`` with ``d1`` holding ratings (N,) or (N, 1)
(regression, conventions as above) or one-hot classes (N, K) (classification, classes
``"0" .. "K-1"``). A ``meta.json`` as above is honoured. All-zero steps are missing.

Missing steps, both layouts: every step keeps its time position; a sample whose missing
steps lie before or between observed ones (left padding, a gap) keeps them as missing steps in
its mask (``SplitData.mask``; the count of such samples is in ``info["samples_with_gaps"]``),
so per-step alignment across modalities survives. Non-finite values at observed steps are an
error; at missing steps they are ignored (set to 0).

Errors: :class:`~msakit.errors.MissingDataError` for absent files or keys,
:class:`~msakit.errors.DataError` for everything malformed; each names the file and key and
says what was expected.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msakit.data.batch import MODALITIES, SplitData, lengths_of
from msakit.data.catalog import pinned, register_summary, require_files
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DatasetEntry, register_dataset, register_path_loader
from msakit.errors import DataError, MissingDataError

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",), "valid": ("valid", "val", "dev"), "test": ("test",),
}
EXTENSIONS = (".npz", ".h5", ".hdf5")
META_KEYS = ("label_range", "classes", "standardized", "name", "description")
# MFN file prefix -> msakit modality
MFN_MODALITIES = {"text_emb": "text", "audio": "audio", "video": "vision"}


# ----------------------------------------------------------------------------- file reading
def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError as e:  # object array: needs pickle
                    raise DataError(
                        f"{path}: key {k!r} is an object array ({e}); store numbers as numeric "
                        f"arrays and ids as a fixed-width string array (np.array(ids, dtype=str))"
                    ) from None
            return out
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file (numpy.savez): {e}") from None


def _read_h5(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file: {e}") from None
    out = {}
    with f:
        for k in keys if keys is not None else list(f):
            if k not in f:
                continue
            v = f[k]
            if not isinstance(v, h5py.Dataset):
                raise DataError(
                    f"{path}: {k!r} is an HDF5 group; expected top-level datasets "
                    f"(text/audio/vision, labels, ...)"
                )
            out[k] = v.asstr()[()] if h5py.check_string_dtype(v.dtype) else v[()]
    return out


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every top-level array of an ``.npz`` or ``.h5`` / ``.hdf5`` file, by key."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: file not found")
    return _read_npz(path) if path.suffix == ".npz" else _read_h5(path)


def _read_meta(folder: Path) -> dict:
    p = folder / "meta.json"
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{p}: expected a JSON object with keys from {META_KEYS}")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise DataError(f"{p}: unknown keys {unknown}; accepted: {list(META_KEYS)}")
    if "label_range" in meta and "classes" in meta:
        raise DataError(f"{p}: give 'label_range' (regression) or 'classes' (classification), "
                        f"not both")
    if "label_range" in meta:
        r = meta["label_range"]
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in r)
                or not r[0] < r[1]):
            raise DataError(f"{p}: 'label_range' must be [lo, hi] with lo < hi, got {r!r}")
        meta["label_range"] = (float(r[0]), float(r[1]))
    if "classes" in meta:
        c = meta["classes"]
        if (not isinstance(c, list) or len(c) < 2 or not all(isinstance(v, str) for v in c)
                or len(set(c)) != len(c)):
            raise DataError(f"{p}: 'classes' must be a list of at least 2 distinct names, got {c!r}")
        meta["classes"] = tuple(c)
    if "standardized" in meta and not isinstance(meta["standardized"], bool):
        raise DataError(f"{p}: 'standardized' must be true or false, got {meta['standardized']!r}")
    return meta


# ----------------------------------------------------------------------------- one split
@dataclass
class _Mod:
    x: np.ndarray  # (N, L, D) float32, zero at missing steps
    lengths: np.ndarray  # (N,) int64, one past the last observed step
    present: np.ndarray  # (N,) bool
    mask: np.ndarray | None  # (N, L) observed steps, when some sample has a gap
    gaps: int  # samples with missing steps before or between observed ones
    src: str  # "file: key" for messages


@dataclass
class _RawSplit:
    mods: dict[str, _Mod]
    labels: np.ndarray  # (N,) float64 values or int64 class indices
    label_kind: str  # "float" | "int" | "onehot"
    n_classes: int | None  # one-hot width
    ids: list[str]
    src: str  # the file holding labels


def _as_labels(y: np.ndarray, src: str) -> tuple[np.ndarray, str, int | None]:
    """(N,) labels -> (values, kind, one-hot width)."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise DataError(
            f"{src}: labels must be numbers ((N,) float for regression, (N,) int class indices "
            f"or (N, K) one-hot for classification), got dtype {y.dtype}; name classes in "
            f"meta.json 'classes' and store their indices"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        yf = y.astype(np.float64)
        ok = np.isin(yf, (0.0, 1.0)).all() and (yf.sum(axis=1) == 1).all()
        if not ok:
            bad = int(np.flatnonzero(~(np.isin(yf, (0.0, 1.0)).all(1) & (yf.sum(1) == 1)))[0])
            raise DataError(
                f"{src}: 2-D labels {y.shape} are read as one-hot classes (N, K), but row {bad} "
                f"is {yf[bad].tolist()}; expected exactly one 1 per row (or give (N,) labels)"
            )
        return yf.argmax(axis=1).astype(np.int64), "onehot", int(y.shape[1])
    if y.ndim != 1:
        raise DataError(f"{src}: labels must be (N,), (N, 1) or one-hot (N, K), got {y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            raise DataError(f"{src}: {int(bad.sum())} labels are NaN or inf (first at sample "
                            f"{int(np.flatnonzero(bad)[0])})")
        return y.astype(np.float64), "float", None
    return y.astype(np.int64), "int", None


def _as_ids(ids: np.ndarray, n: int, src: str) -> list[str]:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise DataError(f"{src}: ids must be (N={n},) strings, got shape {ids.shape}")
    out = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    if len(set(out)) != n:
        dup = next(i for i in out if out.count(i) > 1)
        raise DataError(f"{src}: ids must be unique within a split; {dup!r} repeats")
    return out


def _modality(
    x: np.ndarray, n: int, src: str, key: str,
    lengths: np.ndarray | None = None, mask: np.ndarray | None = None,
    present: np.ndarray | None = None,
) -> _Mod:
    where = f"{src}: {key!r}"
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where} must be numeric features, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise DataError(f"{where} must be (N, L, D) features (or (N, D)), got shape {x.shape}")
    if x.shape[0] != n:
        raise DataError(f"{where} has {x.shape[0]} samples but the labels have {n}; expected "
                        f"(N={n}, L, D)")
    if x.shape[2] == 0:
        raise DataError(f"{where} has D = 0 features, shape {x.shape}")
    N, L, _ = x.shape
    if lengths is not None and mask is not None:
        raise DataError(f"{src}: give lengths_{key} or mask_{key}, not both")
    steps = np.arange(L)[None, :]
    if lengths is not None:
        lens = np.asarray(lengths)
        integral = lens.dtype.kind in "iu" or (
            lens.dtype.kind == "f" and np.array_equal(lens, np.round(lens)))
        if lens.shape not in ((N,), (N, 1)) or not integral:
            raise DataError(f"{src}: 'lengths_{key}' must be (N={N},) integers, got shape "
                            f"{lens.shape} dtype {lens.dtype}")
        lens = lens.reshape(N).astype(np.int64)
        if (lens < 0).any() or (lens > L).any():
            raise DataError(f"{src}: 'lengths_{key}' must lie in [0, L={L}], got "
                            f"{int(lens.min())} .. {int(lens.max())}")
        obs = steps < lens[:, None]
    elif mask is not None:
        mk = np.asarray(mask)
        if mk.shape != (N, L) or not (mk.dtype == bool or np.isin(mk, (0, 1)).all()):
            raise DataError(f"{src}: 'mask_{key}' must be (N={N}, L={L}) bool, got shape "
                            f"{mk.shape} dtype {mk.dtype}")
        obs = mk.astype(bool)
    else:
        obs = (x != 0).any(axis=2)  # an all-zero step is missing
    if present is not None:
        pr = np.asarray(present)
        if pr.shape != (N,) or not (pr.dtype == bool or np.isin(pr, (0, 1)).all()):
            raise DataError(f"{src}: 'present_{key}' must be (N={N},) bool, got shape "
                            f"{pr.shape} dtype {pr.dtype}")
        obs = obs & pr.astype(bool)[:, None]
    xf = x.astype(np.float32)
    finite = np.isfinite(xf).all(axis=2)
    bad = obs & ~finite
    if bad.any():
        i, t = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(
            f"{where}: {int(bad.sum())} observed steps hold NaN or inf (first: sample {i}, step "
            f"{t}); fix them or mark them missing with mask_{key}/lengths_{key}"
        )
    lens, holes = lengths_of(obs)
    gaps = int(holes.sum())
    xf[~obs] = 0
    return _Mod(xf, lens, lens > 0, obs if gaps else None, gaps, where)


def _split_from_arrays(arrs: dict[str, np.ndarray], src: str, split: str) -> _RawSplit:
    if "labels" not in arrs:
        raise MissingDataError(f"{src}: no 'labels' array (keys: {sorted(arrs)}); expected "
                               f"'labels' (N,) float or int, or (N, K) one-hot")
    mods = [m for m in MODALITIES if m in arrs]
    extra = {f"{p}_{m}" for p in ("lengths", "mask", "present") for m in MODALITIES}
    unknown = sorted(set(arrs) - set(MODALITIES) - extra - {"labels", "ids"})
    if unknown:
        hint = " ('video' -> 'vision')" if "video" in unknown else ""
        raise DataError(
            f"{src}: unknown keys {unknown}{hint}; accepted: text, audio, vision (N, L, D), "
            f"lengths_<m> / mask_<m> / present_<m>, labels, ids"
        )
    orphans = sorted(k for k in set(arrs) & extra if k.split("_", 1)[1] not in arrs)
    if orphans:
        raise DataError(f"{src}: {orphans} given without the modality array itself")
    if not mods:
        raise MissingDataError(f"{src}: none of the modality arrays 'text', 'audio', 'vision' "
                               f"(keys: {sorted(arrs)})")
    y, kind, k = _as_labels(arrs["labels"], f"{src}: 'labels'")
    n = len(y)
    ids = (_as_ids(arrs["ids"], n, f"{src}: 'ids'") if "ids" in arrs
           else [f"{split}_{i}" for i in range(n)])
    out = {
        m: _modality(arrs[m], n, src, m, arrs.get(f"lengths_{m}"), arrs.get(f"mask_{m}"),
                     arrs.get(f"present_{m}"))
        for m in mods
    }
    return _RawSplit(out, y, kind, k, ids, src)


# ----------------------------------------------------------------------------- assembling
def _labels_and_task(raw: dict[str, _RawSplit], meta: dict, meta_src: str) -> dict:
    """Decide regression vs classification; return MSADataset label kwargs + y per split."""
    kinds = {s: r.label_kind for s, r in raw.items()}
    classes = meta.get("classes")
    if classes is None and "label_range" not in meta and any(
            k in ("int", "onehot") for k in kinds.values()):
        widths = {r.n_classes for r in raw.values() if r.label_kind == "onehot"}
        if len(widths) > 1:
            raise DataError("one-hot labels have different widths across splits: " + ", ".join(
                f"{r.src}: K={r.n_classes}" for r in raw.values() if r.label_kind == "onehot"))
        k = widths.pop() if widths else 1 + max(int(r.labels.max(initial=0)) for r in raw.values())
        classes = tuple(str(i) for i in range(max(k, 2)))
    if classes is not None:
        ys = {}
        for s, r in raw.items():
            y = r.labels
            if r.label_kind == "float":
                if not np.array_equal(y, np.round(y)):
                    raise DataError(f"{r.src}: 'labels' must be class indices 0..{len(classes) - 1} "
                                    f"(classes {list(classes)} from {meta_src}), got "
                                    f"non-integer values")
            if r.label_kind == "onehot" and r.n_classes != len(classes):
                raise DataError(f"{r.src}: one-hot labels have K={r.n_classes} columns, "
                                f"{meta_src} names {len(classes)} classes")
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise DataError(f"{r.src}: class indices must lie in 0..{len(classes) - 1}, got "
                                f"{int(y.min())} .. {int(y.max())}")
            ys[s] = y.astype(np.float32)
        return {"y": ys, "label_scale": "range", "label_range": None, "classes": tuple(classes)}
    for r in raw.values():
        if r.label_kind == "onehot":
            raise DataError(f"{r.src}: one-hot labels with a declared 'label_range' in "
                            f"{meta_src}; drop label_range to read them as classes")
    ys = {s: r.labels.astype(np.float32) for s, r in raw.items()}
    lr = meta.get("label_range")
    if lr is None:
        allv = np.concatenate(list(ys.values()))
        lo, hi = float(allv.min(initial=0)), float(allv.max(initial=0))
        if lo < 0 and lo >= -1 and hi <= 1:
            return {"y": ys, "label_scale": "sims", "label_range": (-1.0, 1.0), "classes": None}
        if lo < 0 and lo >= -3 and hi <= 3:
            return {"y": ys, "label_scale": "mosi", "label_range": (-3.0, 3.0), "classes": None}
        if lo == hi:
            raise DataError(f"{raw['train'].src}: every label is {lo:g}; a regression target "
                            f"must vary (or declare label_range in meta.json)")
        return {"y": ys, "label_scale": "range", "label_range": (lo, hi), "classes": None}
    for s, r in raw.items():
        out = (ys[s] < lr[0]) | (ys[s] > lr[1])
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise DataError(f"{r.src}: 'labels': {int(out.sum())} labels lie outside the declared "
                            f"label_range [{lr[0]:g}, {lr[1]:g}] ({meta_src} or the caller); the "
                            f"first is {float(ys[s][i]):g} at sample {i}")
    scale = {(-3.0, 3.0): "mosi", (-1.0, 1.0): "sims"}.get(tuple(lr), "range")
    return {"y": ys, "label_scale": scale, "label_range": tuple(lr), "classes": None}


def build_dataset(
    raw: dict[str, _RawSplit], meta: dict, name: str, info: dict, meta_src: str,
    label_range: tuple[float, float] | None = None,
    classes: tuple[str, ...] | None = None,
    standardized: bool | None = None,
) -> MSADataset:
    """Check modalities/dims across splits, decide labels, build the MSADataset."""
    meta = dict(meta)
    if label_range is not None:
        meta.pop("classes", None)
        meta["label_range"] = tuple(float(v) for v in label_range)
    if classes is not None:
        meta.pop("label_range", None)
        meta["classes"] = tuple(classes)
    mods = [m for m in MODALITIES if any(m in r.mods for r in raw.values())]
    dims: dict[str, tuple[int, str]] = {}
    for r in raw.values():
        for m, md in r.mods.items():
            d = md.x.shape[2]
            if m in dims and dims[m][0] != d:
                raise DataError(f"{md.src} has D={d} features, {dims[m][1]} has D={dims[m][0]}; "
                                f"a modality's feature dimension must be the same in every split")
            dims.setdefault(m, (d, md.src))
    lab = _labels_and_task(raw, meta, meta_src)
    splits, absent, gaps, missing_steps = {}, [], {}, {}
    for s, r in raw.items():
        n = len(r.labels)
        x, lengths, present, mask = {}, {}, {}, {}
        for m in mods:
            if m in r.mods:
                md = r.mods[m]
                x[m], lengths[m], present[m] = md.x, md.lengths, md.present
                if md.gaps:
                    gaps[f"{s}/{m}"], mask[m] = md.gaps, md.mask
                total = md.x.shape[0] * md.x.shape[1]
                seen = md.mask.sum() if md.gaps else md.lengths.sum()
                missing_steps[f"{s}/{m}"] = round(1 - float(seen) / max(total, 1), 4)
            else:
                absent.append(f"{s}/{m}")
                x[m] = np.zeros((n, 1, dims[m][0]), np.float32)
                lengths[m] = np.zeros(n, np.int64)
                present[m] = np.zeros(n, bool)
        splits[s] = SplitData(x=x, lengths=lengths, present=present, y=lab["y"][s], ids=r.ids,
                              mask=mask or None)
    for m in mods:
        if f"train/{m}" in absent:
            warnings.warn(f"{name}: modality {m!r} has no training data (absent from "
                          f"{raw['train'].src}) but is in another split", RuntimeWarning,
                          stacklevel=3)
    info = {**info, "absent_from_file": absent, "samples_with_gaps": gaps,
            "missing_step_share": missing_steps}
    for k in ("name", "description"):
        if k in meta:
            info[k if k == "description" else "display_name"] = meta[k]
    std = bool(meta.get("standardized", False)) if standardized is None else bool(standardized)
    info["standardized"] = std
    return MSADataset(
        name=name, splits=splits, label_scale=lab["label_scale"], info=info,
        label_range=lab["label_range"], classes=lab["classes"], standardized=std,
    )


# ----------------------------------------------------------------------------- plain arrays
def find_split_files(folder: Path) -> dict[str, Path]:
    """``{split: file}`` for a plain-array folder; errors name what was looked for."""
    out = {}
    for s, aliases in SPLIT_ALIASES.items():
        found = [folder / f"{a}{e}" for a in aliases for e in EXTENSIONS
                 if (folder / f"{a}{e}").is_file()]
        if not found:
            names = ", ".join(f"{a}{e}" for a in aliases for e in EXTENSIONS)
            raise MissingDataError(f"{folder}: no {s} split file; expected one of {names}")
        if len(found) > 1:
            raise DataError(f"{folder}: several {s} split files {[p.name for p in found]}; "
                            f"keep one")
        out[s] = found[0]
    return out


def is_array_folder(p: Path) -> bool:
    return p.is_dir() and any((p / f"train{e}").is_file() for e in EXTENSIONS)


def load_arrays(
    path: str | Path, name: str | None = None,
    label_range: tuple[float, float] | None = None,
    classes: tuple[str, ...] | None = None,
    standardized: bool | None = None,
    **_: object,
) -> MSADataset:
    """Load a plain-array folder (layout in the module docstring). ``label_range``,
    ``classes`` and ``standardized`` override ``meta.json``; ``name`` defaults to the folder's
    absolute path (what ``load_dataset`` resolves again)."""
    folder = Path(path)
    if not folder.is_dir():
        raise MissingDataError(f"{folder}: not a folder; expected train/valid/test .npz or .h5 "
                               f"split files in it")
    meta = _read_meta(folder)
    files = find_split_files(folder)
    raw = {s: _split_from_arrays(read_arrays(f), str(f), s) for s, f in files.items()}
    return build_dataset(
        raw, meta, name or str(folder.resolve()),
        {"format": "plain arrays", "source": str(folder),
         "files": {s: f.name for s, f in files.items()}},
        str(folder / "meta.json"), label_range, classes, standardized,
    )


# ----------------------------------------------------------------------------- MFN layout
def is_mfn_folder(p: Path) -> bool:
    return p.is_dir() and (p / "y_train.h5").is_file()


def _read_d1(path: Path) -> np.ndarray:
    arrs = _read_h5(path, ("d1",))
    if "d1" not in arrs:
        import h5py

        with h5py.File(path, "r") as f:
            keys = list(f)
        raise MissingDataError(f"{path}: no dataset 'd1' (keys: {keys}); expected MFN's layout "
                               f"with the array in 'd1'")
    return arrs["d1"]


def load_mfn_folder(
    path: str | Path, name: str | None = None,
    label_range: tuple[float, float] | None = None,
    classes: tuple[str, ...] | None = None,
    standardized: bool | None = None,
    **_: object,
) -> MSADataset:
    """Load MFN's HDF5 layout (module docstring); ``label_range`` / ``classes`` /
    ``standardized`` override ``meta.json``."""
    folder = Path(path)
    meta = _read_meta(folder)
    have = [p for p in MFN_MODALITIES if any((folder / f"{p}_{s}.h5").is_file() for s in SPLITS)]
    if not have:
        raise MissingDataError(
            f"{folder}: no feature files; expected {{audio,video,text_emb}}_{{train,valid,test}}.h5"
        )
    raw = {}
    for s in SPLITS:
        yf = folder / f"y_{s}.h5"
        if not yf.is_file():
            raise MissingDataError(f"{folder}: {yf.name} not found; MFN's layout needs "
                                   f"y_train.h5, y_valid.h5 and y_test.h5")
        y, kind, k = _as_labels(_read_d1(yf), f"{yf}: 'd1'")
        n = len(y)
        mods = {}
        for p in have:
            f = folder / f"{p}_{s}.h5"
            if f.is_file():
                mods[MFN_MODALITIES[p]] = _modality(_read_d1(f), n, str(f), "d1")
        raw[s] = _RawSplit(mods, y, kind, k, [f"{s}_{i}" for i in range(n)], str(yf))
    return build_dataset(
        raw, meta, name or str(folder.resolve()),
        {"format": "mfn-h5", "source": str(folder),
         "files": sorted(f"{p}_{s}.h5" for p in have for s in SPLITS
                         if (folder / f"{p}_{s}.h5").is_file())},
        str(folder / "meta.json"), label_range, classes, standardized,
    )


register_path_loader(is_array_folder, load_arrays)
register_path_loader(is_mfn_folder, load_mfn_folder)


# ----------------------------------------------------------------------------- mfn-mmmo
MMMO = "mfn-mmmo"
MMMO_FILES = tuple(f"{MMMO}/{p}_{s}.h5" for p in ("audio", "video", "y") for s in SPLITS)
MMMO_SOURCE = (
    "github.com/pliang279/MFN (commit b0453fb, new_data/mmmo/: {audio,video,y}_{train,valid,"
    "test}.h5, MIT licence) -> mfn-mmmo/"
)


def load_mfn_mmmo(root: Path, verify: bool = True, **kw) -> MSADataset:
    """ICT-MMMO as shipped with MFN: audio (COVAREP, 20 x 74) and vision (FACET, 20 x 36),
    ratings 1 (most negative) to 5 in steps of 0.5; all-zero steps are missing; raw scales
    (audio reaches 255), not standardised."""
    root = require_files(MMMO, root, verify)
    kw.pop("name", None)
    kw.setdefault("label_range", (1.0, 5.0))
    ds = load_mfn_folder(root / MMMO, name=MMMO, **kw)
    ds.info["dataset"] = "ICT-MMMO (Woellmer et al. 2013), MFN features (Zadeh et al. 2018)"
    return ds


register_dataset(DatasetEntry(
    name=MMMO, loader=load_mfn_mmmo, files=pinned(*MMMO_FILES), source=MMMO_SOURCE,
    modalities=("audio", "vision"),
    description="ICT-MMMO movie reviews (MFN's features): audio COVAREP 20x74, video FACET "
                "20x36, ratings 1-5; all-zero steps missing; raw scales",
))
register_summary(MMMO, lambda root: {"dims": {"audio": 74, "vision": 36},
                                     "sizes": {"train": 220, "valid": 40, "test": 80}})
