"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5).

A ``.csd`` file holds one group named after the sequence (its "root name"), with
``<root>/data/<video_id>/features`` (T, D) and ``<root>/data/<video_id>/intervals`` (T, 2) start
and end seconds per step, and ``<root>/metadata/<key>`` one-element string datasets.
Label files (e.g. ``CMU_MOSI_Opinion_Labels.csd``) hold one step per opinion segment; segment i
(0-based) of a video is utterance ``<video_id>_<i+1>``.

:func:`load_csd_folder` builds an :class:`MSADataset` from a folder with a labels ``.csd``,
feature ``.csd`` files and the SDK's ``standard_folds.json``: each utterance gets the feature
steps of its video whose intervals overlap its segment (or a sequence stored under the
segment's own key, as the SDK's aligned output does: ``<video_id>[<i>]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from msakit.data.batch import MODALITIES, SplitData
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import register_path_loader
from msakit.data.sources.mmsa_pickle import clean_nonfinite, warn_nonfinite
from msakit.errors import ConfigError, DataError, MissingDataError

# roles -> keywords looked for in file names, in priority order (lower-case, no separators)
ROLE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "labels": ("opinionlabels", "alllabels", "labels", "label"),
    "text": ("wordvectors", "glovevectors", "glove", "bert", "text"),
    "audio": ("covarep", "opensmile", "audio", "acoustic"),
    "vision": ("facet", "openface", "visual", "vision", "video"),
}
# default step caps: MMSA's unaligned MOSI lengths
DEFAULT_MAX_LEN = {"text": 50, "audio": 375, "vision": 500}


def _root_group(f: h5py.File, path: Path) -> h5py.Group:
    roots = [g for g in f.values() if isinstance(g, h5py.Group) and "data" in g]
    if len(roots) != 1:
        raise DataError(
            f"{path}: not a CMU-MultimodalSDK computational sequence: expected one top-level "
            f"group holding 'data' and 'metadata', found {len(roots)} (top level: {list(f)})"
        )
    return roots[0]


@contextmanager
def _open_csd(path: Path) -> Iterator[h5py.File]:
    """h5py.File(path) whose low-level errors become one-line DataError naming the file."""
    if not path.is_file():
        raise MissingDataError(f".csd file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not an HDF5 file (a .csd is HDF5): {_line(e)}") from None
    try:
        with f:
            yield f
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: unreadable computational sequence: {_line(e)}") from None


def _line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def read_csd(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{video_id: (features (T, D), intervals (T, 2))}`` from a ``.csd`` file.

    Raises DataError for a file that is not HDF5, an empty ``data`` group, or feature
    dimensions that differ between videos."""
    path = Path(path)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with _open_csd(path) as f:
        data = _root_group(f, path)["data"]
        if not len(data):
            raise DataError(f"{path}: the 'data' group is empty (no videos)")
        first = None  # (video, feature dim)
        for vid, g in data.items():
            if not isinstance(g, h5py.Group) or "features" not in g or "intervals" not in g:
                raise DataError(f"{path}: data/{vid} needs 'features' and 'intervals'")
            feats, iv = np.asarray(g["features"]), np.asarray(g["intervals"], dtype=np.float64)
            if feats.ndim == 1:
                feats = feats[:, None]
            if feats.ndim != 2:
                raise DataError(f"{path}: data/{vid}/features must be (T, D), got {feats.shape}")
            if iv.shape != (len(feats), 2):
                raise DataError(
                    f"{path}: data/{vid}/intervals must be ({len(feats)}, 2), got {iv.shape}"
                )
            if first is None:
                first = (vid, feats.shape[1])
            elif feats.shape[1] != first[1]:
                raise DataError(
                    f"{path}: feature dims differ between videos: data/{first[0]} has "
                    f"{first[1]}, data/{vid} has {feats.shape[1]}"
                )
            out[vid] = (feats, iv)
    return out


def read_csd_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata`` strings of a ``.csd`` file (e.g. "root name", "dimension names")."""
    path = Path(path)
    meta: dict[str, str] = {}
    with _open_csd(path) as f:
        g = _root_group(f, path)
        for k, ds in g.get("metadata", {}).items():
            v = ds[()]
            v = v[0] if isinstance(v, np.ndarray) and v.size else v
            meta[k] = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return meta


def _norm(s: str) -> str:
    return "".join(c for c in s.lower() if c.isalnum())


def find_roles(folder: Path) -> dict[str, Path]:
    """Pick the labels/text/audio/vision ``.csd`` of a folder by file name (see ROLE_KEYWORDS)."""
    files = sorted(folder.glob("*.csd"))
    roles: dict[str, Path] = {}
    for role, keys in ROLE_KEYWORDS.items():
        for k in keys:
            hits = [p for p in files if k in _norm(p.stem) and p not in roles.values()]
            if hits:
                roles[role] = hits[0]
                break
    return roles


def _segment(feats: dict, vid: str, i: int, start: float, end: float) -> np.ndarray | None:
    for key in (f"{vid}[{i}]", f"{vid}_{i + 1}"):
        if key in feats:
            return feats[key][0]
    if vid not in feats:
        return None
    f, iv = feats[vid]
    return f[(iv[:, 0] < end) & (iv[:, 1] > start)]


def load_csd_folder(
    folder: str | Path,
    files: dict[str, str] | None = None,
    folds: str | Path | dict | None = None,
    max_len: int | dict[str, int] | None = None,
    label_column: int = 0,
    name: str | None = None,
    **_: object,
) -> MSADataset:
    """An MSADataset from a folder of ``.csd`` files.

    files: ``{"labels"|"text"|"audio"|"vision": file name}`` overriding the name-based choice.
    folds: ``{"train": [video ids], "valid": [...], "test": [...]}`` or a json file of it;
    default ``standard_folds.json`` in the folder. max_len: step cap per modality (default
    50/375/500 as MMSA's unaligned MOSI); longer segments keep their first steps.
    label_column: which label dimension is the sentiment (0 in the SDK's label files).
    """
    folder = Path(folder)
    roles = find_roles(folder)
    roles.update({k: folder / v for k, v in (files or {}).items()})
    bad = [k for k in roles if k not in ("labels", *MODALITIES)]
    if bad:
        raise ConfigError(f"files: unknown roles {bad}; expected labels, text, audio, vision")
    if "labels" not in roles:
        raise MissingDataError(f"{folder}: no labels .csd (a file name containing 'label')")
    mods = [m for m in MODALITIES if m in roles]
    if not mods:
        raise MissingDataError(
            f"{folder}: no feature .csd files (names with {', '.join(ROLE_KEYWORDS['text'][:2])}, "
            f"covarep, facet, ...); pass files={{'text': ..., 'audio': ..., 'vision': ...}}"
        )
    if folds is None:
        folds = folder / "standard_folds.json"
        if not folds.is_file():
            raise MissingDataError(
                f"{folder}: no standard_folds.json; pass folds={{'train': [video ids], ...}}"
            )
    if not isinstance(folds, dict):
        try:
            folds = json.loads(Path(folds).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{folds}: not a readable folds json ({_line(e)})") from None
    if not isinstance(folds, dict) or any(
        not isinstance(folds.get(s), list) or not all(isinstance(v, str) for v in folds[s])
        for s in SPLITS
    ):
        raise DataError(f"folds: expected {{'train': [video ids], 'valid': [...], 'test': "
                        f"[...]}} (keys {SPLITS}, lists of strings)")
    caps = {m: DEFAULT_MAX_LEN[m] for m in mods}
    if isinstance(max_len, int):
        caps = dict.fromkeys(mods, max_len)
    elif max_len:
        caps.update(max_len)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in caps.values()):
        raise ConfigError(f"max_len must be integers >= 1 per modality, got {caps}")

    labels = read_csd(roles["labels"])
    feats = {m: read_csd(roles[m]) for m in mods}
    for m in mods:
        kinds = {v[0].dtype.kind for v in feats[m].values()}
        if not kinds <= set("fiub"):
            raise DataError(f"{roles[m]}: features are not numeric (dtype kinds {kinds})")
    dims = {m: next(iter(feats[m].values()))[0].shape[1] for m in mods}
    n_labels = next(iter(labels.values()))[0].shape[1]
    if not -n_labels <= label_column < n_labels:
        raise ConfigError(f"label_column {label_column} out of range: {roles['labels']} has "
                          f"{n_labels} label dimension(s)")
    counts: dict[str, int] = {}
    splits = {}
    for split in SPLITS:
        rows = []  # (id, label, {m: seq or None})
        for vid in folds[split]:
            if vid not in labels:
                continue
            lab, iv = labels[vid]
            for i in range(len(lab)):
                segs = {m: _segment(feats[m], vid, i, iv[i, 0], iv[i, 1]) for m in mods}
                rows.append((f"{vid}_{i + 1}", float(lab[i, label_column]), segs))
        if not rows:
            raise DataError(f"{folder}: split {split!r} has no labelled video of its fold list")
        x, lengths = {}, {}
        for m in mods:
            seqs = [r[2][m] for r in rows]
            lens = np.array([0 if s is None else min(len(s), caps[m]) for s in seqs])
            arr = np.zeros((len(rows), max(1, int(lens.max())), dims[m]), dtype=np.float32)
            for j, s in enumerate(seqs):
                if lens[j]:
                    arr[j, : lens[j]] = s[: lens[j]]
            counts[f"{split}/{m}"] = clean_nonfinite(arr)
            x[m], lengths[m] = arr, lens
        splits[split] = SplitData(
            x=x, lengths=lengths, y=[r[1] for r in rows], ids=[r[0] for r in rows]
        )
    warn_nonfinite(str(folder), counts)
    try:
        return MSADataset(
            name=name or str(folder.resolve()),
            splits=splits,
            info={"format": "csd", "source": str(folder),
                  "files": {k: p.name for k, p in roles.items()}, "max_len": caps},
        )
    except DataError as e:
        raise DataError(f"{roles['labels']}: {e}") from None


register_path_loader(lambda p: p.is_dir() and any(p.glob("*.csd")), load_csd_folder)
