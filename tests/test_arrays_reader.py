"""The plain-array reader (.npz / .h5 split files), MFN's HDF5 layout, and the mfn-mmmo entry."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import msakit.data  # noqa: F401  (registers every source)
from msakit.data import catalog, registry
from msakit.data.batch import collate
from msakit.data.registry import DATASETS, load_dataset
from msakit.data.sources.arrays import MMMO_FILES, load_arrays, load_mfn_folder
from msakit.errors import DataError, MissingDataError


def write(path: Path, **arrays) -> Path:
    """One split file, .npz or .h5 by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                v = np.asarray(v)
                f.create_dataset(k, data=v.astype("S") if v.dtype.kind == "U" else v)
    return path


def split_arrays(n: int, seed: int, L=(6, 8, 5), D=(4, 3, 2), labels=None) -> dict:
    rng = np.random.default_rng(seed)
    out = {m: rng.normal(size=(n, l_, d)).astype("f4") + 0.5
           for m, l_, d in zip(("text", "audio", "vision"), L, D, strict=True)}
    out["labels"] = rng.uniform(-3, 3, n).astype("f4") if labels is None else labels
    return out


def make_folder(tmp: Path, ext=".npz", names=("train", "valid", "test"), sizes=(12, 5, 6),
                **kw) -> Path:
    for i, (s, n) in enumerate(zip(names, sizes, strict=True)):
        write(tmp / f"{s}{ext}", **split_arrays(n, i, **kw))
    return tmp


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("ext", [".npz", ".h5"])
def test_round_trip_through_load_dataset(tmp_path, ext):
    arrs = {s: split_arrays(n, i) for i, (s, n) in enumerate(
        (("train", 12), ("valid", 5), ("test", 6)))}
    arrs["train"]["ids"] = np.array([f"clip{i}" for i in range(12)])
    for s, a in arrs.items():
        write(tmp_path / f"{s}{ext}", **a)
    ds = load_dataset(str(tmp_path))  # by path, through the registered predicate
    assert ds.name == str(tmp_path.resolve())
    assert ds.dims == {"text": 4, "audio": 3, "vision": 2}
    assert ds.sizes() == {"train": 12, "valid": 5, "test": 6}
    assert ds.task == "regression" and ds.label_scale == "mosi" and ds.label_range == (-3, 3)
    tr = ds.splits["train"]
    assert tr.ids[:2] == ["clip0", "clip1"] and ds.splits["test"].ids[0] == "test_0"
    for m in ds.modalities:
        np.testing.assert_array_equal(tr.x[m], arrs["train"][m])
        assert (tr.lengths[m] == arrs["train"][m].shape[1]).all() and tr.present[m].all()
    np.testing.assert_allclose(tr.y, arrs["train"]["labels"])
    assert ds.standardized is False


def test_split_aliases_and_mixed_formats(tmp_path):
    write(tmp_path / "train.h5", **split_arrays(8, 0))
    write(tmp_path / "dev.npz", **split_arrays(4, 1))
    write(tmp_path / "test.hdf5", **split_arrays(4, 2))
    ds = load_arrays(tmp_path)
    assert ds.sizes() == {"train": 8, "valid": 4, "test": 4}
    assert ds.info["files"] == {"train": "train.h5", "valid": "dev.npz", "test": "test.hdf5"}


def test_two_d_modality_is_one_step(tmp_path):
    for i, s in enumerate(("train", "valid", "test")):
        a = split_arrays(5, i)
        a["audio"] = a["audio"][:, 0]  # (N, D)
        write(tmp_path / f"{s}.npz", **a)
    ds = load_arrays(tmp_path)
    assert ds.splits["train"].x["audio"].shape == (5, 1, 3)


# ----------------------------------------------------------------------------- missing steps
def test_zero_steps_missing_and_gaps_kept_in_place(tmp_path):
    make_folder(tmp_path)
    a = split_arrays(4, 0)
    v = a["vision"]  # (4, 5, 2)
    v[0, [0, 2, 4]] = 0  # gaps at the start, middle and end
    v[1] = 0  # the whole modality absent for sample 1
    v[2, 3:] = 0  # trailing padding
    write(tmp_path / "train.npz", **a)
    ds = load_arrays(tmp_path)
    tr = ds.splits["train"]
    assert tr.lengths["vision"].tolist() == [4, 0, 3, 5]  # one past the last observed step
    assert tr.present["vision"].tolist() == [True, False, True, True]
    # every step stays at its time position; the gaps are missing steps of the mask
    np.testing.assert_array_equal(tr.x["vision"], v)
    assert tr.observed("vision")[0].tolist() == [False, True, False, True, False]
    assert ds.info["samples_with_gaps"] == {"train/vision": 1}
    assert ds.info["missing_step_share"]["train/vision"] == pytest.approx(1 - 10 / 20)
    b = collate(tr, [0, 2])  # what a model is handed: the same steps, the same positions
    assert b.mask["vision"][0].tolist() == [False, True, False, True]
    assert b.mask["vision"][1].tolist() == [True, True, True, False]
    np.testing.assert_array_equal(b.x["vision"][0, 1].numpy(), v[0, 1])


def test_lengths_mask_and_present_keys(tmp_path):
    make_folder(tmp_path)
    a = split_arrays(4, 0)
    a["lengths_text"] = np.array([6, 3, 0, 1])
    a["text"][2] = 99.0  # beyond length 0: ignored
    m = np.ones((4, 8), bool)
    m[0, 1] = False
    a["mask_audio"] = m
    a["audio"][0, 1] = np.nan  # masked: ignored, not an error
    a["present_vision"] = np.array([True, False, True, True])
    write(tmp_path / "train.npz", **a)
    tr = load_arrays(tmp_path).splits["train"]
    assert tr.lengths["text"].tolist() == [6, 3, 0, 1]
    assert tr.present["text"].tolist() == [True, True, False, True]
    assert (tr.x["text"][2] == 0).all() and (tr.x["text"][1, 3:] == 0).all()
    assert tr.lengths["audio"].tolist() == [8, 8, 8, 8] and np.isfinite(tr.x["audio"]).all()
    assert tr.observed("audio")[0].tolist() == [True, False] + [True] * 6
    assert (tr.x["audio"][0, 1] == 0).all()  # the masked NaN step, in place
    np.testing.assert_array_equal(tr.x["audio"][0, 2], a["audio"][0, 2])
    assert tr.present["vision"].tolist() == [True, False, True, True]
    assert tr.lengths["vision"][1] == 0


def test_modality_missing_from_one_split_is_absent(tmp_path):
    make_folder(tmp_path)
    a = split_arrays(5, 1)
    del a["text"]
    write(tmp_path / "valid.npz", **a)
    ds = load_arrays(tmp_path)
    va = ds.splits["valid"]
    assert not va.present["text"].any() and va.x["text"].shape == (5, 1, 4)
    assert ds.info["absent_from_file"] == ["valid/text"]


# ----------------------------------------------------------------------------- labels
def test_label_conventions(tmp_path):
    # floats beyond [-3, 3] -> "range" over the observed labels
    make_folder(tmp_path / "r", labels=None)
    for i, s in enumerate(("train", "valid", "test")):
        a = split_arrays(5, i, labels=np.linspace(0, 10, 5) + i)
        write(tmp_path / "r" / f"{s}.npz", **a)
    ds = load_arrays(tmp_path / "r")
    assert ds.label_scale == "range" and ds.label_range == (0.0, 12.0)
    # labels in [-1, 1] with negatives -> sims
    for i, s in enumerate(("train", "valid", "test")):
        write(tmp_path / "s" / f"{s}.npz", **split_arrays(5, i, labels=np.linspace(-1, 1, 5)))
    assert load_arrays(tmp_path / "s").label_scale == "sims"
    # meta.json declares the range; standardized and name are kept
    (tmp_path / "r" / "meta.json").write_text(json.dumps(
        {"label_range": [0, 20], "standardized": True, "name": "mine"}))
    ds = load_arrays(tmp_path / "r")
    assert ds.label_range == (0.0, 20.0) and ds.standardized
    assert ds.info["display_name"] == "mine"
    # a label outside the declared range names the file
    (tmp_path / "r" / "meta.json").write_text(json.dumps({"label_range": [0, 5]}))
    with pytest.raises(DataError, match=r"train\.npz.*outside the declared label_range"):
        load_arrays(tmp_path / "r")


def test_classification_int_labels_and_meta_classes(tmp_path):
    for i, s in enumerate(("train", "valid", "test")):
        write(tmp_path / f"{s}.h5", **split_arrays(6, i, labels=np.array([0, 1, 2, 0, 1, 2])))
    ds = load_arrays(tmp_path)
    assert ds.task == "classification" and ds.classes == ("0", "1", "2")
    assert ds.splits["train"].y.dtype == np.float32 and ds.splits["train"].y.tolist()[:3] == [0, 1, 2]
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["neg", "neu", "pos", "x"]}))
    assert load_arrays(tmp_path).classes == ("neg", "neu", "pos", "x")
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["neg", "pos"]}))
    with pytest.raises(DataError, match=r"class indices must lie in 0\.\.1"):
        load_arrays(tmp_path)


def test_classification_one_hot(tmp_path):
    for i, s in enumerate(("train", "valid", "test")):
        write(tmp_path / f"{s}.npz", **split_arrays(4, i, labels=np.eye(4)[[3, 0, 1, 3]]))
    ds = load_arrays(tmp_path)
    assert ds.classes == ("0", "1", "2", "3") and ds.splits["valid"].y.tolist() == [3, 0, 1, 3]


# ----------------------------------------------------------------------------- errors
def _bad(tmp_path, mutate, exc=DataError, match=None, split="train"):
    make_folder(tmp_path)
    a = split_arrays(12 if split == "train" else 5, 0)
    mutate(a)
    write(tmp_path / f"{split}.npz", **a)
    with pytest.raises(exc, match=match):
        load_arrays(tmp_path)


def test_error_missing_labels(tmp_path):
    _bad(tmp_path, lambda a: a.pop("labels"), MissingDataError, r"train\.npz: no 'labels'")


def test_error_n_mismatch(tmp_path):
    _bad(tmp_path, lambda a: a.update(audio=a["audio"][:-1]), DataError,
         r"train\.npz: 'audio' has 11 samples but the labels have 12")


def test_error_wrong_ndim(tmp_path):
    _bad(tmp_path, lambda a: a.update(text=a["text"][..., None]), DataError,
         r"'text' must be \(N, L, D\)")


def test_error_dims_differ_across_splits(tmp_path):
    _bad(tmp_path, lambda a: a.update(audio=a["audio"][..., :2]), DataError,
         r"valid\.npz: 'audio' has D=2 features, .*train\.npz: 'audio' has D=3", split="valid")


def test_error_unknown_key(tmp_path):
    _bad(tmp_path, lambda a: a.update(video=a.pop("vision")), DataError,
         r"unknown keys \['video'\] \('video' -> 'vision'\)")


def test_error_nan_at_observed_step(tmp_path):
    def f(a):
        a["text"][3, 2, 1] = np.nan
    _bad(tmp_path, f, DataError, r"'text': 1 observed steps hold NaN.*sample 3, step 2")


def test_error_lengths_out_of_range_and_both(tmp_path):
    _bad(tmp_path, lambda a: a.update(lengths_text=np.full(12, 7)), DataError,
         r"'lengths_text' must lie in \[0, L=6\]")
    _bad(tmp_path, lambda a: a.update(lengths_text=np.full(12, 2),
                                      mask_text=np.ones((12, 6), bool)),
         DataError, "not both")


def test_error_bad_one_hot_and_string_labels(tmp_path):
    _bad(tmp_path, lambda a: a.update(labels=np.ones((12, 3))), DataError, "exactly one 1")
    _bad(tmp_path, lambda a: a.update(labels=np.array(["pos"] * 12)), DataError,
         "labels must be numbers")


def test_error_missing_split_and_ambiguous(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "test.npz").unlink()
    with pytest.raises(MissingDataError, match=r"no test split file; expected one of test\.npz"):
        load_arrays(tmp_path)
    write(tmp_path / "test.npz", **split_arrays(3, 2))
    write(tmp_path / "val.npz", **split_arrays(3, 2))
    with pytest.raises(DataError, match="several valid split files"):
        load_arrays(tmp_path)


def test_error_object_ids_and_bad_meta(tmp_path):
    make_folder(tmp_path)
    a = split_arrays(12, 0)
    a["ids"] = np.array([f"a{i}" for i in range(12)], dtype=object)
    write(tmp_path / "train.npz", **a)
    with pytest.raises(DataError, match="'ids' is an object array"):
        load_arrays(tmp_path)
    make_folder(tmp_path)
    (tmp_path / "meta.json").write_text('{"label_rnage": [1, 5]}')
    with pytest.raises(DataError, match=r"meta\.json: unknown keys \['label_rnage'\]"):
        load_arrays(tmp_path)


def test_error_duplicate_ids(tmp_path):
    _bad(tmp_path, lambda a: a.update(ids=np.array(["x"] * 12)), DataError, "'x' repeats")


# ----------------------------------------------------------------------------- MFN layout
def make_mfn(tmp: Path, sizes=(10, 4, 5), y=None, mods=("audio", "video")) -> Path:
    rng = np.random.default_rng(0)
    dims = {"audio": 5, "video": 3, "text_emb": 7}
    for i, (s, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        for p in mods:
            a = rng.normal(size=(n, 6, dims[p]))
            a[:, 0] = 0  # a leading zero step for everyone
            write(tmp / f"{p}_{s}.h5", d1=a)
        write(tmp / f"y_{s}.h5", d1=rng.uniform(1, 5, (n, 1)) if y is None else y(n, i))
    return tmp


def test_mfn_regression_audio_video_only(tmp_path):
    ds = load_dataset(str(make_mfn(tmp_path)))
    assert ds.modalities == ("audio", "vision") and ds.dims == {"audio": 5, "vision": 3}
    assert ds.sizes() == {"train": 10, "valid": 4, "test": 5}
    assert ds.task == "regression" and ds.label_scale == "range"
    tr = ds.splits["train"]  # the leading zero step is missing, the others keep their place
    assert (tr.lengths["audio"] == 6).all() and (tr.observed("audio").sum(1) == 5).all()
    assert not tr.observed("audio")[:, 0].any()
    assert ds.info["format"] == "mfn-h5"
    (tmp_path / "meta.json").write_text(json.dumps({"label_range": [1, 5]}))
    assert load_mfn_folder(tmp_path).label_range == (1.0, 5.0)


def test_mfn_one_hot_classes_and_text(tmp_path):
    ds = load_mfn_folder(make_mfn(tmp_path, y=lambda n, i: np.eye(3)[np.arange(n) % 3],
                                  mods=("text_emb", "audio")))
    assert ds.task == "classification" and ds.classes == ("0", "1", "2")
    assert ds.modalities == ("text", "audio") and ds.dims["text"] == 7
    assert ds.splits["test"].y.tolist() == [0, 1, 2, 0, 1]


def test_mfn_errors(tmp_path):
    make_mfn(tmp_path)
    (tmp_path / "y_test.h5").unlink()
    with pytest.raises(MissingDataError, match=r"y_test\.h5 not found"):
        load_mfn_folder(tmp_path)
    write(tmp_path / "y_test.h5", other=np.ones(5))
    with pytest.raises(MissingDataError, match=r"y_test\.h5: no dataset 'd1'"):
        load_mfn_folder(tmp_path)
    write(tmp_path / "y_test.h5", d1=np.ones(4))
    with pytest.raises(DataError, match=r"audio_test\.h5: 'd1' has 5 samples but the labels have 4"):
        load_mfn_folder(tmp_path)


# ----------------------------------------------------------------------------- mfn-mmmo
def test_mfn_mmmo_catalog_entry():
    entry = DATASETS.get("mfn-mmmo")
    assert entry.modalities == ("audio", "vision")
    assert set(entry.files) == set(MMMO_FILES) and all(entry.files.values())  # all pinned
    assert "pliang279/MFN" in entry.source
    row = catalog.describe(entry, verify=False)
    assert row["dims"] == {"audio": 74, "vision": 36}
    assert row["sizes"] == {"train": 220, "valid": 40, "test": 80}


@pytest.mark.realdata
def test_mfn_mmmo_real():
    entry = DATASETS.get("mfn-mmmo")
    root = registry.data_root(entry)
    if not all((root / f).is_file() for f in entry.files):
        pytest.skip(f"mfn-mmmo not found (looked in "
                    f"{', '.join(map(str, registry.shared_data_candidates()))})")
    ds = load_dataset("mfn-mmmo")
    assert ds.sizes() == {"train": 220, "valid": 40, "test": 80}
    assert ds.dims == {"audio": 74, "vision": 36}
    assert ds.label_scale == "range" and ds.label_range == (1.0, 5.0) and not ds.standardized
    ys = np.concatenate([sd.y for sd in ds.splits.values()])
    assert ys.min() == 1 and ys.max() == 5 and (ys * 2 == np.round(ys * 2)).all()
    tr = ds.splits["train"]
    assert tr.present["audio"].all() and tr.present["vision"].all()
    # README: 6-8% of audio steps and 15-18% of video steps are all zeros -> missing
    share = ds.info["missing_step_share"]
    assert 0.05 < share["train/audio"] < 0.09 and 0.15 < share["train/vision"] < 0.19
    assert np.abs(tr.x["audio"]).max() == 255
    median = float(np.median(tr.y))
    mae = float(np.abs(ds.splits["test"].y - median).mean())
    assert median == 4.0 and mae == pytest.approx(1.18125)
