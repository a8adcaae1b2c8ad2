"""The data report: statistics per split, and each warning triggered by a constructed dataset."""

from __future__ import annotations

import time

import numpy as np
import pytest

from msakit.data.batch import SplitData
from msakit.data.dataset import MSADataset
from msakit.data.report import format_report, inspect_dataset


def split(n, seed, dims=(("text", 5, 4), ("audio", 7, 3)), y=None, scale=1.0, prefix=None):
    rng = np.random.default_rng(seed)
    x, lens = {}, {}
    for m, L, D in dims:
        lens[m] = rng.integers(1, L + 1, n)
        a = rng.standard_normal((n, L, D), dtype=np.float32) * np.float32(scale)
        a[np.arange(L)[None, :] >= lens[m][:, None]] = 0
        x[m], lens[m] = a, lens[m]
    y = rng.uniform(-3, 3, n) if y is None else y
    return SplitData(x, lens, y, [f"{prefix or seed}_{i}" for i in range(n)])


def dataset(train=None, valid=None, test=None, **kw):
    return MSADataset("t", {"train": train or split(40, 0), "valid": valid or split(10, 1),
                            "test": test or split(12, 2)}, **kw)


def kinds(ds):
    return inspect_dataset(ds)["warning_kinds"]


def test_clean_dataset_stats_and_no_warnings():
    ds = dataset()
    r = inspect_dataset(ds)
    assert r["warnings"] == [] and r["task"] == "regression" and r["label_range"] == [-3, 3]
    tr = r["splits"]["train"]
    assert tr["n"] == 40 and tr["none_present"] == 0
    sd = ds.splits["train"]
    t = tr["modalities"]["text"]
    assert t["dim"] == 4 and t["max_len"] == 5 and t["present_rate"] == 1
    assert t["observed_step_rate"] == pytest.approx(sd.lengths["text"].sum() / (40 * 5))
    obs = np.concatenate([sd.x["text"][i, :k] for i, k in enumerate(sd.lengths["text"])])
    assert t["min"] == pytest.approx(obs.min()) and t["max"] == pytest.approx(obs.max())
    assert t["mean_abs"] == pytest.approx(np.abs(obs).mean(), rel=1e-5)
    assert t["std"] == pytest.approx(obs.std(), rel=1e-4)
    assert t["max_feature_std"] == pytest.approx(obs.std(0).max(), rel=1e-4)
    lab = tr["labels"]
    assert lab["min"] == pytest.approx(sd.y.min()) and sum(lab["hist"]["counts"]) == 40
    text = format_report(r)
    assert "warnings: none" in text and "train" in text and "text" in text
    short = format_report(r, short=True)
    assert len(short.splitlines()) == 4 and len(short) < len(text)


def test_eval_only_modality():
    tr = split(40, 0)
    tr.present["audio"][:] = False
    r = inspect_dataset(dataset(train=tr))
    assert r["warning_kinds"] == ["eval_only_modality"]
    assert "audio: present in valid/test but never in train" in r["warnings"][0]
    assert r["splits"]["train"]["modalities"]["audio"]["present_rate"] == 0


def test_nothing_observed():
    te = split(12, 2)
    for m in te.x:
        te.present[m][[0, 5]] = False
    r = inspect_dataset(dataset(test=te))
    assert r["warning_kinds"] == ["nothing_observed"]
    assert "test: 2 of 12 samples" in r["warnings"][0]
    assert r["splits"]["test"]["none_present"] == pytest.approx(2 / 12)
    assert r["splits"]["test"]["modalities"]["text"]["present_rate"] == pytest.approx(10 / 12)


def test_constant_features_counted_per_modality():
    tr = split(40, 0)
    for d in (0, 2):  # two constant text features over observed steps (padding stays 0)
        tr.x["text"][:, :, d] = np.where(np.arange(5)[None] < tr.lengths["text"][:, None], 7, 0)
    r = inspect_dataset(dataset(train=tr))
    assert r["warning_kinds"] == ["constant_features"]
    assert "text: 2 of 4 features are constant" in r["warnings"][0]
    assert r["splits"]["train"]["modalities"]["text"]["constant_features"] == 2
    assert r["splits"]["train"]["modalities"]["audio"]["constant_features"] == 0


def test_unnormalised_scale_unless_standardized():
    tr, va, te = split(40, 0, scale=50), split(10, 1, scale=50), split(12, 2, scale=50)
    assert kinds(dataset(tr, va, te)) == ["unnormalised"] * 2
    assert kinds(dataset(tr, va, te, standardized=True)) == []
    tiny = [split(n, s, scale=1e-4) for n, s in ((40, 0), (10, 1), (12, 2))]
    assert kinds(dataset(*tiny)) == ["unnormalised"] * 2


def test_labels_outside_declared_range():
    ds = dataset(label_scale="range", label_range=(-3.0, 3.0))
    ds.splits["test"].y[:3] = 4.5  # the constructor checks ranges; a later edit does not
    r = inspect_dataset(ds)
    assert r["warning_kinds"] == ["label_range"]
    assert "test: 3 labels outside the declared range [-3, 3]" in r["warnings"][0]


def test_classification_counts_and_missing_class():
    ys = [np.arange(n) % 3 for n in (40, 10, 12)]
    ys[0] = np.arange(40) % 2  # class 2 never in train
    ds = dataset(split(40, 0, y=ys[0]), split(10, 1, y=ys[1]), split(12, 2, y=ys[2]),
                 classes=("neg", "neu", "pos"))
    r = inspect_dataset(ds)
    assert r["task"] == "classification"
    assert r["splits"]["train"]["labels"]["counts"] == {"neg": 20, "neu": 20, "pos": 0}
    assert r["splits"]["test"]["labels"]["counts"] == {"neg": 4, "neu": 4, "pos": 4}
    assert r["warning_kinds"] == ["missing_class"]
    assert "classification, 3 classes" in format_report(r)


def test_rating_grid_counts_per_value():
    ys = [np.tile([1.0, 1.5, 5.0], 20)[:n] for n in (40, 10, 12)]
    ds = dataset(split(40, 0, y=ys[0]), split(10, 1, y=ys[1]), split(12, 2, y=ys[2]),
                 label_scale="range", label_range=(1.0, 5.0))
    r = inspect_dataset(ds)
    assert r["splits"]["valid"]["labels"]["value_counts"] == {"1": 4, "1.5": 3, "5": 3}
    assert "per value: 1: 4, 1.5: 3, 5: 3" in format_report(r)


def test_fast_on_mosi_sized_data():
    dims = (("text", 50, 768), ("audio", 375, 5), ("vision", 500, 20))
    # a MOSI-sized training split (what the warnings read); small evaluation splits
    ds = dataset(split(1284, 0, dims=dims), split(30, 1, dims=dims), split(30, 2, dims=dims))
    t = time.perf_counter()
    r = inspect_dataset(ds)
    assert time.perf_counter() - t < 5  # ~0.4 s on one core
    assert r["splits"]["train"]["modalities"]["text"]["dim"] == 768


def test_nonfinite_features_warned():
    tr = split(40, 0)
    tr.x["audio"][0, 0, 1] = np.nan
    tr.lengths["audio"][0] = max(1, tr.lengths["audio"][0])
    r = inspect_dataset(dataset(train=tr))
    assert r["warning_kinds"] == ["nonfinite"] and "train/audio: 1 NaN/inf" in r["warnings"][0]
    assert np.isfinite(r["splits"]["train"]["modalities"]["audio"]["max"])
