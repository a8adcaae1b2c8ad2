"""MMSA / MMSA-FET ``label.csv`` files: transcripts + labels, text features from an encoder.

Columns: ``id`` (or ``video_id`` and ``clip_id``, joined as ``<video_id>_<clip_id>``),
``text``, ``label``, ``mode`` (train/valid/test; ``dev``/``val`` mean valid, as in the
CMU-MOSI label.csv), optionally ``label_T``/``label_A``/``label_V``
(CH-SIMS per-modality labels -> ``y_m``). Other columns are ignored.

Text features are the token-level outputs of :class:`msakit.features.text.TextEncoder`
(default MiniLM-L6, 384-d, max 50 tokens as MMSA), computed once and cached on disk; the
split also carries ``text_ids``/``text_ids_mask`` and ``raw_text``. Audio and vision are absent:
``present`` False and length 0, with a one-step one-dimensional zero placeholder so every split
has all three modalities in the Batch contract.

Catalog: ``mosi-text`` (CMU-MOSI, 2195 utterances) and ``mosei-text`` (CMU-MOSEI, 22788).
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msakit.data.batch import SplitData
from msakit.data.catalog import pinned, register_summary, require_files, sha256_file
from msakit.data.dataset import LABEL_RANGES, SPLITS, MSADataset, check_ids, check_labels
from msakit.data.registry import DatasetEntry, register_dataset, register_path_loader
from msakit.errors import ConfigError, DataError, MissingDataError, first_line

if TYPE_CHECKING:  # pandas loads on first use: `msakit datasets` starts fast
    import pandas as pd

_PER_MODALITY = {"label_T": "text", "label_A": "audio", "label_V": "vision"}
_MODE_ALIASES = {"dev": "valid", "val": "valid", "validation": "valid"}


def _modes(col: pd.Series) -> pd.Series:
    col = col.str.strip().str.lower()
    return col.replace(_MODE_ALIASES)


def _decode(path: Path) -> str:
    """The file's text; DataError naming the encoding (or "not UTF-8") and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        boms = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",
                codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}
        enc = next((v for k, v in boms.items() if raw.startswith(k)), None)
        if enc is None and raw[1:200:2].count(0) > 40:
            enc = "UTF-16"  # no BOM, but every other byte is NUL
        detected = f"looks like {enc}, " if enc else ""
        raise DataError(
            f"{path}: not UTF-8 ({detected}invalid byte 0x{raw[e.start]:02x} at byte offset "
            f"{e.start}); save it as UTF-8"
        ) from None


def read_label_csv(path: str | Path) -> pd.DataFrame:
    """The rows of a label.csv as a DataFrame with columns id, text, label, mode (+ label_T/A/V).

    Raises MissingDataError, or DataError for a file that is not UTF-8, has no data rows,
    lacks a column (named), or holds an unknown mode or a non-numeric label."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"label.csv not found: {path}")
    text = _decode(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header id,text,label,mode") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: not a readable CSV ({first_line(e)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "id" not in df.columns and {"video_id", "clip_id"} <= set(df.columns):
        df["id"] = df["video_id"] + "_" + df["clip_id"]
    missing = [c for c in ("id", "text", "label", "mode") if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing columns {missing}; a label.csv needs id (or video_id and clip_id), "
            f"text, label, mode; found {list(df.columns)}"
        )
    if df.empty:
        raise DataError(f"{path}: header only, no data rows")
    df["mode"] = _modes(df["mode"])
    bad_mode = sorted(set(df["mode"]) - set(SPLITS))
    if bad_mode:
        raise DataError(f"{path}: column 'mode' has {bad_mode}; expected one of {SPLITS} "
                        f"(or dev/val for valid)")
    for col in ("label", "label_T", "label_A", "label_V"):
        if col in df.columns:
            vals = pd.to_numeric(df[col], errors="coerce")
            if vals.isna().any():
                row = int(np.flatnonzero(vals.isna().to_numpy())[0])
                raise DataError(
                    f"{path}: column {col!r} row {row + 2} is {df[col].iloc[row]!r}, expected a number"
                )
            df[col] = vals.astype(np.float32)
    return df


def _limited(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is None:
        return df
    if limit < 1:
        raise ConfigError(f"limit must be >= 1 (rows per split), got {limit}")
    return df.groupby("mode", sort=False, group_keys=False).head(limit)


def load_label_csv(
    path: str | Path,
    encoder: str | None = None,
    max_length: int = 50,
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    label_scale: str | None = None,
    name: str | None = None,
    progress: bool = True,
    **_: object,
) -> MSADataset:
    """An MSADataset from a label.csv with encoder text features (audio/vision absent).

    encoder: HF hub name or local path (default: the packaged MiniLM). limit: keep the first
    ``limit`` rows of each split (quick checks). label_scale: "mosi" or "sims"; by default "sims"
    when every label lies in [-1, 1] and per-modality labels exist. The file, labels and ids are
    validated before any text is encoded.
    """
    from msakit.features.text import TextEncoder, cached_encode

    path = Path(path)
    df = _limited(read_label_csv(path), limit)
    has_m = [c for c in _PER_MODALITY if c in df.columns]
    if label_scale is None:
        in_unit = bool(np.abs(df["label"].to_numpy()).max() <= 1)
        label_scale = "sims" if in_unit and has_m else "mosi"
    if label_scale not in LABEL_RANGES:
        raise ConfigError(f"label_scale must be one of {list(LABEL_RANGES)}, got {label_scale!r}")
    name = name or str(path.resolve())  # a name load_dataset resolves again (msakit eval)
    rows = {s: np.flatnonzero((df["mode"] == s).to_numpy()) for s in SPLITS}
    for s, r in rows.items():  # checked before the (slow) text encoding
        if not len(r):
            raise DataError(f"{path}: no rows with mode {s!r}; every split needs rows")
        sub = df.iloc[r]
        for col in ("label", *has_m):
            check_labels(f"{path}: split {s!r}", sub[col].to_numpy(), sub["id"].tolist(),
                         LABEL_RANGES[label_scale], field_name=col)
    check_ids(name, {s: df["id"].iloc[r].tolist() for s, r in rows.items()})

    enc = TextEncoder(encoder, max_length=max_length, device=device, batch_size=batch_size)
    texts = df["text"].tolist()
    feats, mask, ids = cached_encode(
        enc, texts, source_key=f"{sha256_file(path)}|limit={limit}", progress=progress
    )
    splits = {}
    for s, r in rows.items():
        n = len(r)
        sub = df.iloc[r]
        placeholder = np.zeros((n, 1, 1), dtype=np.float32)
        zeros = np.zeros(n, dtype=np.int64)
        splits[s] = SplitData(
            x={"text": feats[r], "audio": placeholder, "vision": placeholder.copy()},
            lengths={"text": mask[r].sum(1), "audio": zeros, "vision": zeros.copy()},
            y=sub["label"].to_numpy(),
            ids=sub["id"].tolist(),
            y_m={_PER_MODALITY[c]: sub[c].to_numpy() for c in has_m} or None,
            text_ids=ids[r],
            text_ids_mask=mask[r],
            raw_text=sub["text"].tolist(),
            text_unk_id=enc.unk_id,
        )
    return MSADataset(
        name=name,
        splits=splits,
        label_scale=label_scale,
        info={"format": "label.csv", "source": str(path), "encoder": enc.name,
              "max_length": max_length, "limit": limit,
              "absent": "audio and vision: 1x1 zero placeholders, present=False"},
    )


def _is_label_csv(p: Path) -> bool:
    if not (p.is_file() and p.suffix == ".csv"):
        return False
    with open(p, encoding="utf-8", errors="replace") as f:
        header = {c.strip() for c in f.readline().split(",")}
    return {"text", "label", "mode"} <= header


register_path_loader(_is_label_csv, load_label_csv)
register_path_loader(  # an MMSA-FET dataset folder with its label.csv
    lambda p: p.is_dir() and _is_label_csv(p / "label.csv"),
    lambda p, **kw: load_label_csv(p / "label.csv", **kw),
)


_ENTRIES = {
    "mosi-text": ("mosi-text/label.csv", "CMU-MOSI transcripts + labels (MMSA label.csv, "
                  "1281/229/685); text features from a pretrained encoder, no audio/vision"),
    "mosei-text": ("mosei-text/label.csv", "CMU-MOSEI transcripts + labels (MMSA label.csv, "
                   "16274/1861/4653); text features from a pretrained encoder, no audio/vision"),
}
_SOURCE = ("an MMSA-format label.csv of {ds} (id,text,label,mode), as MMSA / MMSA-FET "
           "distribute it (github.com/thuiar/MMSA)")


def _register(name: str, rel: str, description: str) -> None:
    def loader(root: Path, verify: bool = True, **kw) -> MSADataset:
        root = require_files(name, root, verify)
        return load_label_csv(root / rel, name=name, **kw)

    def summary(root: Path | None) -> dict:
        import csv
        from collections import Counter

        from msakit.features.text import encoder_dim

        with open(root / rel, newline="", encoding="utf-8-sig") as f:  # no pandas: fast start
            modes = Counter(
                _MODE_ALIASES.get(m, m)
                for m in ((r.get("mode") or "").strip().lower() for r in csv.DictReader(f))
            )
        dim = encoder_dim()
        return {"dims": {"text": dim} if dim else {},
                "sizes": {s: int(modes.get(s, 0)) for s in SPLITS}}

    register_dataset(DatasetEntry(
        name=name, loader=loader, description=description, files=pinned(rel),
        source=_SOURCE.format(ds=name.split("-")[0].upper()), modalities=("text",),
    ))
    register_summary(name, summary)


for _name, (_rel, _desc) in _ENTRIES.items():
    _register(_name, _rel, _desc)
