"""Datasets written by ``msakit extract`` (:mod:`msakit.extract.dataset`).

``load_dataset(DIR)`` reads ``DIR/unaligned.npz`` (each modality at its own rate),
``load_dataset(DIR, aligned=True)`` or ``load_dataset("DIR/aligned.npz")`` the word-aligned
variant. Rows come from the label file's ``mode`` column; the text modality holds encoder
token features, and ``raw_text`` / ``text_ids`` let a trainable text encoder read the
transcripts. ``info["extract_settings"]`` holds the extraction settings (a run records them
in its ``config.json`` under ``dataset_info``); steps that were not observed (silence, no
face, no stream) are missing in the masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from msakit.data.batch import MODALITIES, SplitData, lengths_of
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import register_path_loader
from msakit.errors import DataError, MissingDataError

FORMAT = "msakit-extract"
VARIANTS = ("unaligned.npz", "aligned.npz")


def arrays_to_split(arrs: dict[str, np.ndarray], rows: np.ndarray, y: np.ndarray,
                    unk_id: int | None, y_m: dict[str, np.ndarray] | None = None
                    ) -> tuple[SplitData, int]:
    """Rows of :func:`stack_clips` arrays as a SplitData, and how many (sample, modality)
    pairs have missing steps before or between observed ones (kept in place, in the mask)."""
    x, lengths, present, mask, gaps = {}, {}, {}, {}, 0
    for m in MODALITIES:
        mk = arrs[f"mask_{m}"][rows]
        lens, holes = lengths_of(mk)
        gaps += int(holes.sum())
        if holes.any():
            mask[m] = mk
        x[m] = np.where(mk[..., None], arrs[f"x_{m}"][rows], 0).astype(np.float32)
        lengths[m], present[m] = lens, arrs[f"present_{m}"][rows] & (lens > 0)
    split = SplitData(
        x=x, lengths=lengths, present=present, y=y, ids=[str(i) for i in arrs["ids"][rows]],
        y_m=y_m, text_ids=arrs["text_ids"][rows], text_ids_mask=arrs["text_ids_mask"][rows],
        raw_text=[str(t) for t in arrs["raw_text"][rows]], text_unk_id=unk_id,
        mask=mask or None)
    return split, gaps


def _manifest(folder: Path) -> dict | None:
    p = folder / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def is_extracted(p: Path) -> bool:
    if p.is_dir():
        return _manifest(p) is not None
    return p.is_file() and p.name in VARIANTS and _manifest(p.parent) is not None


def load_extracted(path: str | Path, aligned: bool | None = None, name: str | None = None,
                   **_: object) -> MSADataset:
    """An extracted dataset; ``aligned`` picks the variant of a folder (default unaligned)."""
    path = Path(path)
    if path.is_file():
        folder, variant = path.parent, path.name
    else:
        folder, variant = path, VARIANTS[1] if aligned else VARIANTS[0]
    manifest = _manifest(folder)
    if manifest is None:
        raise DataError(f"{folder}/manifest.json: not an msakit extract manifest")
    f = folder / variant
    if not f.is_file():
        fails = len(manifest.get("failures", []))
        raise MissingDataError(f"{f}: not found; the extraction finished no clip ({fails} "
                               f"failed, see manifest.json 'failures')")
    try:
        with np.load(f, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not a readable extract file ({e})") from None
    y = arrs["labels"].astype(np.float32)
    if manifest.get("labels") is None or not np.isfinite(y).all():
        raise DataError(f"{folder}: extracted without labels (msakit extract --labels "
                        f"label.csv); features are in {f.name}, but a dataset needs labels "
                        f"and train/valid/test rows")
    modes = arrs["mode"].astype(str)
    has_m = {c: m for c, m in (("label_T", "text"), ("label_A", "audio"), ("label_V", "vision"))
             if c in arrs}
    scale = "sims" if has_m and np.abs(y).max() <= 1 else "mosi"
    unk = int(arrs["text_unk_id"])
    splits, gaps = {}, {}
    for s in SPLITS:
        rows = np.flatnonzero(modes == s)
        if not len(rows):
            raise DataError(f"{folder}: no clip of split {s!r} was extracted (label file "
                            f"'mode'); every split needs clips")
        y_m = {m: arrs[c][rows] for c, m in has_m.items()} or None
        splits[s], gaps[s] = arrays_to_split(arrs, rows, y[rows], None if unk < 0 else unk, y_m)
    info = {"format": FORMAT, "variant": variant.removesuffix(".npz"), "source": str(f),
            "extract_settings": manifest["settings"],
            "extractors": {k: {kk: vv for kk, vv in v.items() if kk != "ffmpeg"}
                           for k, v in manifest.get("extractors", {}).items()},
            "failures": len(manifest.get("failures", [])),
            "samples_with_gaps": {s: g for s, g in gaps.items() if g}}
    return MSADataset(name=name or str(f.resolve() if aligned or path.is_file() else
                                       folder.resolve()),
                      splits=splits, label_scale=scale, info=info)


register_path_loader(is_extracted, load_extracted)
