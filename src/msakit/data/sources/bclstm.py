"""Dataset ``mosi-bclstm``: CMU-MOSI utterance features of bc-LSTM + the official labels.

Features: Poria et al., ACL 2017, "Context-Dependent Sentiment Analysis in User-Generated
Videos", as published in github declare-lab/multimodal-deep-learning (``bc-LSTM/data/``):
one vector per utterance, audio 73 (openSMILE), text 100 (text-CNN), video 100 (3D-CNN), each
stored here as a one-step sequence (L = 1). Labels: continuous sentiment in [-3, 3] from
CMU-MultimodalSDK's ``CMU_MOSI_Opinion_Labels.csd``. 2199 utterances of 93 videos.

Splits: train/test are the feature authors' own speaker-independent split (ids of
``text_train.csv`` / ``text_test.csv``, 1447/752 utterances); the standard SDK folds would leak,
since the text and video features were trained on labels of 558 standard-test utterances.
Validation: ``valid_fraction`` (default 15%, 9 of 62) of the train *videos*, drawn with
``numpy.random.default_rng(split_seed)`` (default seed 0), so no video spans two splits.
Caveat, measured: the text and video features were learned with the labels of the whole
authors' train part, validation included, so validation scores are inflated (ridge on all
features: valid Acc-2 ~0.95 vs test ~0.78); only the test split gives honest numbers.

Checks done at load time: every id has a label, and the sign of every continuous label agrees
with the binary label in the feature files (1 = label >= 0); it does on all 2199 utterances.
With ``standardize`` (default) each feature is z-scored with train-split mean and std, since
the raw openSMILE values range over four orders of magnitude (pitch ~170 next to 0.03).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msakit.data.batch import SplitData
from msakit.data.catalog import pinned, register_summary, require_files
from msakit.data.dataset import MSADataset
from msakit.data.registry import DatasetEntry, register_dataset
from msakit.data.sources.csd import read_csd
from msakit.errors import ConfigError, DataError, MissingDataError, first_line

if TYPE_CHECKING:  # pandas loads on first use: `msakit datasets` starts fast
    import pandas as pd

NAME = "mosi-bclstm"
LABELS = "cmu-mosi/CMU_MOSI_Opinion_Labels.csd"
DIR = "mosi-bclstm"
MODS = {"audio": "audio", "text": "text", "vision": "video"}  # modality -> folder/file prefix
DIMS = {"text": 100, "audio": 73, "vision": 100}
FILES = (
    LABELS,
    f"{DIR}/transcripts.csv",
    *(f"{DIR}/text_{s}.csv" for s in ("train", "test")),
    *(f"{DIR}/{p}/{p}_{s}0.csv" for p in MODS.values() for s in ("train", "test")),
)
SOURCE = (
    "bc-LSTM features: github.com/declare-lab/multimodal-deep-learning (bc-LSTM/data/: "
    "transcripts.csv, text_{train,test}.csv, {audio,text,video}/*0.csv -> mosi-bclstm/); labels: "
    "CMU_MOSI_Opinion_Labels.csd from github.com/worldreboot/audio-text-sentiment-analysis "
    "(cmumosi/) or CMU-MultimodalSDK -> cmu-mosi/"
)


def video_of(utt_id: str) -> str:
    """'03bSnISJMiM_10' -> '03bSnISJMiM' (video ids may contain '_')."""
    return utt_id.rsplit("_", 1)[0]


def _csv(path: Path, **kw) -> pd.DataFrame:
    """pd.read_csv(path, header=None) whose errors become one-line DataError naming the file."""
    import pandas as pd

    try:
        return pd.read_csv(path, header=None, **kw)
    except FileNotFoundError:
        raise MissingDataError(f"{path}: not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable CSV ({first_line(e)})") from None


def _read(path: Path) -> np.ndarray:
    a = _csv(path).to_numpy()
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected numbers only (features and a binary label)")
    return a


def _first_column(path: Path) -> np.ndarray:
    """Column 0 of a headerless CSV as strings (stdlib csv: no pandas at catalog time)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return np.array([row[0] if row else "" for row in csv.reader(f)], dtype=str)
    except FileNotFoundError:
        raise MissingDataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def split_ids(root: Path, valid_fraction: float = 0.15, split_seed: int = 0) -> dict:
    """``{"train"|"valid"|"test": (transcript rows, utterance ids)}``; valid carved by video."""
    if not 0 < valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    d = root / DIR
    ids = _first_column(d / "transcripts.csv")
    rows = {}
    for s in ("train", "test"):
        try:
            r = _first_column(d / f"text_{s}.csv").astype(np.float64)
        except ValueError:
            r = np.array(["x"])
        if r.dtype.kind not in "biuf" or len(r) == 0 or (r != np.round(r)).any() or r.min() < 0 or (
                r.max() >= len(ids)):
            raise DataError(f"{d / f'text_{s}.csv'}: column 0 must be row indices into "
                             f"transcripts.csv (0..{len(ids) - 1})")
        rows[s] = r.astype(np.int64)
    videos = sorted({video_of(i) for i in ids[rows["train"]]})
    n_valid = max(1, round(valid_fraction * len(videos)))
    valid_videos = set(np.random.default_rng(split_seed).choice(videos, n_valid, replace=False))
    in_valid = np.array([video_of(i) in valid_videos for i in ids[rows["train"]]])
    pos = {  # positions in the authors' train/test files
        "train": np.flatnonzero(~in_valid), "valid": np.flatnonzero(in_valid),
        "test": np.arange(len(rows["test"])),
    }
    src = {"train": "train", "valid": "train", "test": "test"}
    return {s: (pos[s], src[s], ids[rows[src[s]][pos[s]]].tolist()) for s in pos}


def load_mosi_bclstm(
    root: Path,
    valid_fraction: float = 0.15,
    split_seed: int = 0,
    standardize: bool = True,
    verify: bool = True,
    **_: object,
) -> MSADataset:
    """Load ``mosi-bclstm`` from a data root holding ``mosi-bclstm/`` and ``cmu-mosi/``."""
    root = require_files(NAME, root, verify)
    d = root / DIR
    labels = {f"{vid}_{i + 1}": float(f[i, 0])
              for vid, (f, _) in read_csd(root / LABELS).items() for i in range(len(f))}
    transcripts = _csv(d / "transcripts.csv", dtype=str, keep_default_na=False)
    if transcripts.shape[1] < 2:
        raise DataError(f"{d / 'transcripts.csv'}: expected columns id, text, ...")
    text_of = dict(zip(transcripts[0], transcripts[1], strict=True))
    parts = split_ids(root, valid_fraction, split_seed)
    raw = {}  # (modality, authors' split) -> (features, binary labels)
    for m, p in MODS.items():
        for s in ("train", "test"):
            a = _read(d / p / f"{p}_{s}0.csv")
            n_expected = len(parts["test"][0]) if s == "test" else (
                len(parts["train"][0]) + len(parts["valid"][0]))
            if a.shape != (n_expected, DIMS[m] + 1):
                raise DataError(f"{d / p / f'{p}_{s}0.csv'}: expected {n_expected} rows of "
                                 f"{DIMS[m]} features + binary label, got {a.shape}")
            raw[m, s] = a[:, :-1].astype(np.float32), a[:, -1]
    splits = {}
    for s, (pos, src, ids) in parts.items():
        missing = [i for i in ids if i not in labels]
        if missing:
            raise DataError(f"{root / LABELS}: no label for {len(missing)} utterances, "
                             f"e.g. {missing[:3]}")
        y = np.array([labels[i] for i in ids], dtype=np.float32)
        for m, p in MODS.items():
            binary = raw[m, src][1][pos]
            disagree = int(((y >= 0).astype(float) != binary).sum())
            if disagree:
                raise DataError(
                    f"{d / p / f'{p}_{src}0.csv'}: {disagree} binary labels disagree with the "
                    f"sign of the labels in {root / LABELS}; the files do not belong together"
                )
        n = len(ids)
        splits[s] = SplitData(
            x={m: raw[m, src][0][pos][:, None, :] for m in MODS},
            lengths={m: np.ones(n, dtype=np.int64) for m in MODS},
            y=y, ids=ids, raw_text=[text_of[i] for i in ids],
        )
    if standardize:
        for m in MODS:
            tr = splits["train"].x[m]
            mu, sd = tr.mean(axis=(0, 1)), tr.std(axis=(0, 1))
            sd[sd < 1e-8] = 1.0
            for sp in splits.values():
                sp.x[m] = ((sp.x[m] - mu) / sd).astype(np.float32)
    try:
        return MSADataset(
            name=NAME,
            splits=splits,
            standardized=bool(standardize),
            info={
                "format": "bc-lstm csv + csd labels",
                "source": str(root),
                "split": f"feature authors' train/test; valid = {valid_fraction:.0%} of train "
                         f"videos (seed {split_seed})",
                "standardized": standardize,
                "label_sign_agreement": 1.0,
            },
        )
    except DataError as e:
        raise DataError(f"{d}: {e}") from None


def _summary(root: Path | None) -> dict:
    return {"dims": dict(DIMS), "sizes": {s: len(v[2]) for s, v in split_ids(root).items()}}


register_dataset(DatasetEntry(
    name=NAME, loader=load_mosi_bclstm, files=pinned(*FILES), source=SOURCE,
    description="CMU-MOSI, bc-LSTM utterance vectors (A 73 / T 100 / V 100, L=1), "
                "feature authors' split, continuous labels in [-3, 3]",
))
register_summary(NAME, _summary)
