"""Readers on the real CMU-MOSI / CMU-MOSEI files of ../shared/data (skipped where absent).

mosi-text is encoded in full once per session (2195 sentences with MiniLM, ~20 s on an idle
2-core machine) into a temporary cache; mosei-text only on a ``limit`` subset.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import msakit.data  # noqa: F401  (registers every source)
from msakit.data import catalog, registry
from msakit.data.registry import DATASETS, load_dataset
from msakit.data.sources.bclstm import video_of
from msakit.data.sources.csd import read_csd, read_csd_metadata

pytestmark = pytest.mark.realdata
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def real_root(name: str):
    """The data root holding dataset ``name``'s files, or skip the test."""
    entry = DATASETS.get(name)
    root = registry.data_root(entry)
    if not all((root / f).is_file() for f in entry.files):
        pytest.skip(f"real data for {name!r} not found (looked in "
                    f"{', '.join(map(str, registry.shared_data_candidates()))})")
    return root


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MSAKIT_CACHE", str(tmp_path_factory.mktemp("msakit-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def mosi_labels():
    root = real_root("mosi-bclstm")
    return {f"{v}_{i + 1}": float(f[i, 0])
            for v, (f, _) in read_csd(root / "cmu-mosi/CMU_MOSI_Opinion_Labels.csd").items()
            for i in range(len(f))}


def test_official_labels_csd(mosi_labels):
    root = real_root("mosi-bclstm")
    assert len(mosi_labels) == 2199 and len({video_of(i) for i in mosi_labels}) == 93
    assert min(mosi_labels.values()) >= -3 and max(mosi_labels.values()) <= 3
    meta = read_csd_metadata(root / "cmu-mosi/CMU_MOSI_Opinion_Labels.csd")
    assert "Opinion Segment Labels" in meta["root name"]
    folds = json.loads((root / "cmu-mosi/standard_folds.json").read_text())
    sizes = {s: sum(video_of(i) in set(v) for i in mosi_labels) for s, v in folds.items()}
    assert sizes == {"train": 1284, "valid": 229, "test": 686}


def test_catalog_verifies_real_files():
    rows = {r["name"]: r for r in catalog.describe_all(verify=True)}
    for name in ("mosi-bclstm", "mosi-text", "mosei-text"):
        real_root(name)
        assert rows[name]["status"] == "ok", rows[name]
    assert rows["mosi-bclstm"]["sizes"] == {"train": 1202, "valid": 245, "test": 752}
    assert rows["mosi-text"]["sizes"] == {"train": 1281, "valid": 229, "test": 685}
    assert rows["mosei-text"]["sizes"] == {"train": 16274, "valid": 1861, "test": 4653}


def test_mosi_bclstm(mosi_labels):
    from sklearn.linear_model import Ridge

    from msakit.metrics import regression_metrics

    root = real_root("mosi-bclstm")
    ds = load_dataset("mosi-bclstm")
    sizes = ds.sizes()
    assert sum(sizes.values()) == 2199 and sizes["test"] == 752
    assert sizes["train"] + sizes["valid"] == 1447
    assert ds.dims == {"audio": 73, "text": 100, "vision": 100}
    assert all(sd.x[m].shape[1] == 1 for sd in ds.splits.values() for m in sd.x)
    videos = {s: {video_of(i) for i in sd.ids} for s, sd in ds.splits.items()}
    assert not videos["train"] & videos["valid"] and not videos["valid"] & videos["test"]
    assert len(videos["valid"]) == 9  # 15% of 62 train videos
    transcripts = pd.read_csv(root / "mosi-bclstm/transcripts.csv", header=None)
    test_rows = pd.read_csv(root / "mosi-bclstm/text_test.csv", header=None)[0].astype(int)
    assert ds.splits["test"].ids == transcripts[0][test_rows].tolist()
    binary = dict(zip(transcripts[0], transcripts[3], strict=True))
    for sd in ds.splits.values():
        np.testing.assert_allclose(sd.y, [mosi_labels[i] for i in sd.ids], atol=1e-6)
        assert ((sd.y >= 0) == np.array([binary[i] == 1 for i in sd.ids])).all()

    def feats(s):
        return np.concatenate([ds.splits[s].x[m][:, 0] for m in ("text", "audio", "vision")], 1)

    # ridge on the authors' whole train part (train + valid), as the data README measured it
    X = np.concatenate([feats("train"), feats("valid")])
    y = np.concatenate([ds.splits["train"].y, ds.splits["valid"].y])
    pred = Ridge(alpha=10.0).fit(X, y).predict(feats("test"))
    acc = regression_metrics(pred, ds.splits["test"].y)["acc2_non0"]
    assert acc > 0.74, acc


def test_mosi_text_full(text_cache, mosi_labels):
    real_root("mosi-text")
    ds = load_dataset("mosi-text")
    assert ds.sizes() == {"train": 1281, "valid": 229, "test": 685}
    assert ds.dims == {"text": 384, "audio": 1, "vision": 1}
    assert ds.present_modalities == ("text",) and ds.label_scale == "mosi"
    for sd in ds.splits.values():
        np.testing.assert_allclose(sd.y, [mosi_labels[i] for i in sd.ids], atol=1e-6)
        assert sd.x["text"].shape[1] <= 50
        assert (sd.lengths["text"] == sd.text_ids_mask.sum(1)).all()
        assert (sd.lengths["text"] >= 3).all() and not sd.present["audio"].any()
    assert ds.splits["train"].raw_text[0] == "anyhow it was really good"


def test_mosei_text_subset(text_cache):
    real_root("mosei-text")
    ds = load_dataset("mosei-text", limit=40)
    assert ds.sizes() == {"train": 40, "valid": 40, "test": 40}
    assert ds.dims["text"] == 384
    for sd in ds.splits.values():
        assert np.abs(sd.y).max() <= 3 and len(set(sd.ids)) == 40
        assert np.isfinite(sd.x["text"]).all() and (sd.lengths["text"] > 2).all()
