"""Every bad data input is refused early with one line naming the file (or dataset, split and
field) and what is wrong: hostile or broken pickles, .csd and label.csv files, labels, lengths,
splits and ids. Plus MSADataset's task/label fields, content hash and repr."""

from __future__ import annotations

import io
import pickle
import tracemalloc
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from test_readers import bclstm_fixture, mmsa_split, write_csd, write_label_csv, write_mmsa

from msakit.data.batch import SplitData
from msakit.data.dataset import MSADataset
from msakit.data.sources.csd import load_csd_folder, read_csd
from msakit.data.sources.label_csv import load_label_csv, read_label_csv
from msakit.data.sources.mmsa_pickle import RestrictedUnpickler, load_mmsa_pickle, safe_load_pickle
from msakit.errors import DataError, MissingDataError

_reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct


def refused(exc_info, *parts: str) -> str:
    """The message of a refusal: one line holding every part."""
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# ---------------------------------------------------------------- pickles
def test_broken_pickles_are_one_line_data_errors(tmp_path):
    good = tmp_path / "good.pkl"
    write_mmsa(good)
    blob = good.read_bytes()
    cases = {"truncated": (blob[: len(blob) // 2], "truncated"),
             "empty": (b"", "empty file"),
             "random": (np.random.default_rng(0).bytes(4096), "not a valid pickle"),
             "text": (b"id,text,label\n1,hi,0.5\n", "not a valid pickle")}
    for name, (data, what) in cases.items():
        p = tmp_path / f"{name}.pkl"
        p.write_bytes(data)
        with pytest.raises(DataError) as e:
            load_mmsa_pickle(p)
        refused(e, str(p), what)
    with pytest.raises(MissingDataError):
        load_mmsa_pickle(tmp_path / "absent.pkl")


class _Reduce:
    def __init__(self, fn, args, state=None) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def test_refused_global_is_a_data_error(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"train": _Reduce(eval, ("1+1",))}))
    with pytest.raises(DataError) as e:
        load_mmsa_pickle(p)
    refused(e, str(p), "builtins.eval")


HUGE = 1 << 30  # elements: 8 GiB of float64 / object pointers


@pytest.mark.parametrize("payload", [
    _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (HUGE,), np.dtype("f8"), False, b"")),
    _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (HUGE,), np.dtype("O"), False, [])),
    _Reduce(_reconstruct, (np.ndarray, (HUGE,), b"f8")),
    _Reduce(np.ndarray, ((HUGE,),)),
    _Reduce(bytearray, (8 * HUGE,)),
    _Reduce(bytes, (8 * HUGE,)),
], ids=["setstate-f8", "setstate-object", "reconstruct", "ndarray-call", "bytearray", "bytes"])
@pytest.mark.parametrize("protocol", [2, 5])
def test_tiny_pickle_asking_for_gigabytes_is_refused_before_allocating(tmp_path, payload,
                                                                       protocol):
    p = tmp_path / "bomb.pkl"
    p.write_bytes(pickle.dumps({"train": payload}, protocol=protocol))
    assert p.stat().st_size < 300
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            safe_load_pickle(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20  # nothing near the declared size was ever allocated
    refused(e, str(p), "refused")


def test_array_larger_than_file_message(tmp_path):
    p = tmp_path / "bomb.pkl"
    state = (1, (HUGE,), np.dtype("f8"), False, b"")
    p.write_bytes(pickle.dumps(_Reduce(_reconstruct, (np.ndarray, (0,), b"b"), state), protocol=5))
    with pytest.raises(DataError) as e:
        safe_load_pickle(p)
    refused(e, "8589934592 bytes", f"({p.stat().st_size} bytes)")


@pytest.mark.parametrize("arr,what", [
    (np.array([{"k": 1}], dtype=object), "object array holding dict"),
    (np.array([1, None], dtype=object), "object array holding int"),
    (np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), "structured"),
])
def test_object_and_structured_dtypes_are_refused(tmp_path, arr, what):
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(rng, 3, tag=s)[0] for s in ("train", "valid", "test")}
    data["valid"]["annotations"] = arr
    for protocol in (2, 5):
        p = tmp_path / f"p{protocol}.pkl"
        p.write_bytes(pickle.dumps(data, protocol=protocol))
        with pytest.raises(DataError) as e:
            load_mmsa_pickle(p)
        refused(e, str(p), what)


def test_object_arrays_of_strings_load(tmp_path):
    arr = np.array([np.str_("a$_$1"), "b$_$2", b"raw"], dtype=object)
    for protocol in (2, 5):
        p = tmp_path / f"p{protocol}.pkl"
        p.write_bytes(pickle.dumps({"id": arr}, protocol=protocol))
        got = safe_load_pickle(p)["id"]
        assert type(got) is np.ndarray and got.tolist() == arr.tolist()


def test_restricted_unpickler_bounds_arrays_by_stream_size():
    blob = pickle.dumps(np.arange(1000, dtype=np.float64))
    assert RestrictedUnpickler(io.BytesIO(blob)).load().shape == (1000,)
    with pytest.raises(DataError, match="larger than the whole file"):
        RestrictedUnpickler(io.BytesIO(blob), max_bytes=4000).load()


def test_mmsa_bad_arrays_and_lengths_name_split_and_field(tmp_path):
    rng = np.random.default_rng(0)
    base = {s: mmsa_split(rng, 4, tag=s)[0] for s in ("train", "valid", "test")}
    p = tmp_path / "x.pkl"

    def load_with(split, key, value):
        data = {s: dict(d) for s, d in base.items()}
        data[split][key] = value
        p.write_bytes(pickle.dumps(data))
        with pytest.raises(DataError) as e:
            load_mmsa_pickle(p)
        return refused(e, str(p))

    assert "test.regression_labels" in load_with("test", "regression_labels", ["a", "b", "c", "d"])
    msg = load_with("valid", "audio_lengths", [1, -2, 3, 1])
    assert "valid" in msg and "lengths['audio']" in msg and "-2 at index 1" in msg
    msg = load_with("train", "vision_lengths", [1, 2, 99, 1])
    assert "lengths['vision']" in msg and "[0, 10]" in msg and "99 at index 2" in msg
    msg = load_with("train", "audio_lengths", [1, 2.5, 3, 1])
    assert "integers" in msg
    msg = load_with("test", "regression_labels", np.array([0.5, np.nan, 1, 1], np.float32))
    assert "split 'test'" in msg and "not finite" in msg and "index 1" in msg and "test" in msg
    msg = load_with("train", "regression_labels", np.array([0.5, 1, 4.5, 1], np.float32))
    assert "[-3, 3]" in msg and "4.5 at index 2" in msg and "'trainvid0$_$3'" in msg


def test_sims_pickle_labels_outside_unit_range(tmp_path):
    p = tmp_path / "SIMS" / "unaligned_39.pkl"
    data, _ = write_mmsa(p, sims=True)
    data["test"]["regression_labels_A"][2] = 1.5
    p.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError) as e:
        load_mmsa_pickle(p, label_scale="sims")
    refused(e, str(p), "split 'test'", "y_m['audio']", "[-1, 1]", "index 2")


# ---------------------------------------------------------------- MSADataset / SplitData checks
def split(n=4, tag="s", y=None, lengths=None, L=5):
    rng = np.random.default_rng(len(tag))
    return SplitData(
        x={"text": rng.normal(size=(n, L, 3)).astype(np.float32)},
        lengths={"text": np.full(n, 2) if lengths is None else np.asarray(lengths)},
        y=np.linspace(-1, 1, n) if y is None else y,
        ids=[f"{tag}{i}" for i in range(n)],
    )


def dataset(**kw) -> MSADataset:
    splits = {s: split(tag=s) for s in ("train", "valid", "test")}
    splits.update(kw.pop("splits", {}))
    return MSADataset("toy", splits, **kw)


@pytest.mark.parametrize("bad,what", [
    (np.nan, "not finite"), (np.inf, "not finite"), (-np.inf, "not finite"),
    (3.5, "outside the label range [-3, 3]"), (-3.01, "outside the label range [-3, 3]"),
])
def test_labels_nan_inf_or_out_of_range(bad, what):
    y = np.array([0.0, 1.0, bad, 2.0])
    with pytest.raises(DataError) as e:
        dataset(splits={"valid": split(tag="valid", y=y)})
    refused(e, "dataset 'toy'", "split 'valid'", "field 'y'", what, "index 2", "'valid2'")


def test_label_scales_and_ranges():
    assert dataset().label_range == (-3.0, 3.0) and dataset().task == "regression"
    y = np.array([0.0, 0.5, 1.2, -0.1])
    assert dataset(splits={"test": split(tag="test", y=y)}).label_range == (-3, 3)
    with pytest.raises(DataError) as e:
        dataset(splits={"test": split(tag="test", y=y)}, label_scale="sims")
    refused(e, "[-1, 1]", "1.2", "index 2")
    with pytest.raises(DataError, match="needs label_range"):
        dataset(label_scale="range")
    ds = dataset(label_scale="range", label_range=(-1, 10))
    assert ds.label_range == (-1.0, 10.0) and ds.task == "regression"
    with pytest.raises(DataError, match="outside the label range \\[0, 0.5\\]"):
        dataset(label_scale="range", label_range=(0, 0.5))
    with pytest.raises(DataError, match="label_range must be"):
        dataset(label_scale="range", label_range=(2, 1))
    with pytest.raises(DataError, match="label_scale must be"):
        dataset(label_scale="bogus")


def test_classification_labels_are_class_indices():
    def cls_splits(y_test):
        return {s: split(tag=s, y=[0, 1, 2, 1] if s != "test" else y_test)
                for s in ("train", "valid", "test")}

    ds = dataset(splits=cls_splits([2, 0, 1, 1]), classes=("neg", "neu", "pos"))
    assert ds.task == "classification" and ds.classes == ("neg", "neu", "pos")
    assert ds.label_range == (0.0, 2.0) and ds.splits["train"].y.dtype == np.float32
    for bad, what in ((3, "not class indices 0..2"), (-1, "not class indices"),
                      (0.5, "not class indices"), (np.nan, "not finite")):
        with pytest.raises(DataError) as e:
            dataset(splits=cls_splits([0, 1, bad, 1]), classes=("neg", "neu", "pos"))
        refused(e, "split 'test'", what, "index 2")
    with pytest.raises(DataError, match="at least 2 distinct"):
        dataset(classes=("a", "a"))


@pytest.mark.parametrize("lengths,what", [
    ([2, -1, 2, 2], "-1 at index 1"), ([2, 2, 6, 2], "6 at index 2"),
])
def test_negative_or_too_long_lengths(lengths, what):
    with pytest.raises(DataError) as e:
        split(tag="v", lengths=lengths, L=5)
    refused(e, "lengths['text']", "[0, 5]", what, "(id 'v")


@pytest.mark.parametrize("which", ["train", "valid", "test"])
def test_empty_split_is_refused(which):
    with pytest.raises(DataError) as e:
        dataset(splits={which: split(tag=which).subset([])})
    refused(e, "dataset 'toy'", f"split {which!r} is empty")


def test_duplicate_ids_within_and_across_splits():
    sd = split(tag="train")
    sd.ids[3] = sd.ids[1]
    with pytest.raises(DataError) as e:
        dataset(splits={"train": sd})
    refused(e, "'train1'", "twice in split 'train'", "index 1 and 3")
    te = split(tag="test")
    te.ids[2] = "valid0"
    with pytest.raises(DataError) as e:
        dataset(splits={"test": te})
    refused(e, "'valid0'", "in splits 'valid' and 'test'", "leak")


# ---------------------------------------------------------------- .csd
def test_csd_not_hdf5(tmp_path):
    p = tmp_path / "x_labels.csd"
    p.write_text("this is not HDF5\n")
    with pytest.raises(DataError) as e:
        read_csd(p)
    refused(e, str(p), "not an HDF5 file")
    with pytest.raises(MissingDataError):
        read_csd(tmp_path / "absent.csd")


def test_csd_empty_data_group(tmp_path):
    p = tmp_path / "empty.csd"
    with h5py.File(p, "w") as f:
        f.create_group("root/data")
        f.create_group("root/metadata")
    with pytest.raises(DataError) as e:
        read_csd(p)
    refused(e, str(p), "'data' group is empty")


def test_csd_feature_dims_differ_between_videos(tmp_path):
    p = tmp_path / "COVAREP.csd"
    iv = np.array([[0.0, 1.0], [1.0, 2.0]])
    write_csd(p, "COVAREP", {"vA": (np.zeros((2, 3)), iv), "vB": (np.zeros((2, 4)), iv)})
    with pytest.raises(DataError) as e:
        read_csd(p)
    refused(e, str(p), "feature dims differ", "data/vA has 3", "data/vB has 4")


def test_csd_folder_with_nan_label(tmp_path):
    iv = np.array([[0.0, 1.0], [1.0, 2.0]])
    labels = {v: (np.array([[1.0], [np.nan if v == "vB" else -1.0]]), iv)
              for v in ("vA", "vB", "vC")}
    write_csd(tmp_path / "T_labels.csd", "Opinion Segment Labels", labels)
    write_csd(tmp_path / "T_COVAREP.csd", "COVAREP",
              {v: (np.ones((4, 2)), np.array([[0, .5], [.5, 1], [1, 1.5], [1.5, 2]]))
               for v in labels})
    folds = tmp_path / "standard_folds.json"
    folds.write_text('{"train": ["vA"], "valid": ["vB"], "test": ["vC"]}')
    with pytest.raises(DataError) as e:
        load_csd_folder(tmp_path)
    refused(e, "T_labels.csd", "split 'valid'", "not finite", "'vB_2'")
    folds.write_text('{"train": ["vA"], "valid": [vB]}')
    with pytest.raises(DataError, match="standard_folds.json: not a readable folds json"):
        load_csd_folder(tmp_path)


# ---------------------------------------------------------------- label.csv
def test_label_csv_header_only_and_empty(tmp_path):
    p = tmp_path / "label.csv"
    p.write_text("video_id,clip_id,text,label,mode\n")
    with pytest.raises(DataError) as e:
        read_label_csv(p)
    refused(e, str(p), "header only")
    p.write_text("")
    with pytest.raises(DataError) as e:
        read_label_csv(p)
    refused(e, str(p), "empty file")
    with pytest.raises(MissingDataError):
        read_label_csv(tmp_path / "absent.csv")


def test_label_csv_missing_column_is_named(tmp_path):
    p = tmp_path / "label.csv"
    pd.DataFrame({"id": ["a"], "label": [1.0], "mode": ["train"]}).to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        read_label_csv(p)
    refused(e, str(p), "missing columns ['text']")


def test_label_csv_not_utf8(tmp_path):
    p = tmp_path / "label.csv"
    text = "id,text,label,mode\na,caf\u00e9 was fine,1.0,train\n"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_label_csv(p)
    refused(e, str(p), "not UTF-8", "0xe9", f"byte offset {text.index(chr(0xe9))}")
    p.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError) as e:
        read_label_csv(p)
    refused(e, str(p), "not UTF-8", "UTF-16", "byte offset 0")
    p.write_bytes(text.encode("utf-8-sig"))  # a BOM is fine
    assert read_label_csv(p)["text"][0] == "caf\u00e9 was fine"


def test_label_csv_labels_and_splits_checked_before_encoding(tmp_path, monkeypatch):
    from msakit.features import text as text_mod

    def boom(*a, **k):
        raise AssertionError("encoder must not run on a bad file")

    monkeypatch.setattr(text_mod, "cached_encode", boom)
    p = tmp_path / "label.csv"
    df = write_label_csv(p, mosei_style=False)
    df.loc[6, "label"] = 7.0
    df.to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        load_label_csv(p, progress=False)
    refused(e, str(p), "split 'test'", "'label'", "[-3, 3]", "'v3_1'")
    df.loc[6, "label"] = 1.0
    df.loc[6, "id"] = df.loc[0, "id"]
    df.to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        load_label_csv(p, progress=False)
    refused(e, "'v0_1'", "in splits 'train' and 'test'")
    df.loc[6, "id"] = "fresh"
    df["mode"] = df["mode"].replace({"dev": "train"})
    df.to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        load_label_csv(p, progress=False)
    refused(e, str(p), "no rows with mode 'valid'")


# ---------------------------------------------------------------- MSADataset extras
def test_content_hash_is_stable_sensitive_and_cached():
    a, b = dataset(), dataset()
    h = a.content_hash()
    assert len(h) == 64 and h == b.content_hash() and a.content_hash() is h
    for changed in (
        dataset(splits={"test": split(tag="test", y=np.linspace(-1, 1, 4) * 10 / 10.5)}),
        dataset(splits={"test": split(tag="tesT")}),
        dataset(splits={"test": split(tag="test", lengths=[2, 2, 2, 3])}),
        dataset(label_scale="sims"),
        dataset(label_scale="range", label_range=(-3, 4)),
    ):
        assert changed.content_hash() != h
    c = dataset()
    c.splits["valid"].x["text"] = c.splits["valid"].x["text"].copy()
    c.splits["valid"].x["text"][0, 0, 0] += 1
    assert c.content_hash() != h


def test_repr_is_one_short_line():
    ds = dataset()
    r = repr(ds)
    assert "\n" not in r and len(r) < 200
    assert r == "MSADataset('toy', regression, text 3, train/valid/test 4/4/4)"
    assert repr(ds.splits["train"]) == "SplitData(n=4, text 5x3)"


def test_bclstm_marks_standardized(tmp_path):
    from msakit.data.sources.bclstm import load_mosi_bclstm

    bclstm_fixture(tmp_path, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_mosi_bclstm(tmp_path, verify=False).standardized
        assert not load_mosi_bclstm(tmp_path, verify=False, standardize=False).standardized


def test_synthetic_datasets_pass_the_checks():
    from msakit.data.sources.synthetic import make_synthetic

    ds = make_synthetic("synthetic-tiny")
    assert ds.task == "regression" and ds.label_range == (-3.0, 3.0)
    assert len(ds.content_hash()) == 64


def test_first_line_quotes_a_reason_even_when_the_library_gives_none():
    from msakit.errors import first_line

    assert first_line(ValueError("")) == "ValueError"
    assert first_line(OSError("\n  \nbad header at byte 9\ndetails")) == "bad header at byte 9"
    assert first_line(RuntimeError("x" * 500), 50) == "x" * 50
