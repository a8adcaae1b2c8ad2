"""Readers on tiny fixtures written in each exact format: MMSA pickles, CMU-MultimodalSDK .csd,
the bc-LSTM CSV set, and MMSA label.csv with a real (packaged) text encoder."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from msakit.data import load_dataset
from msakit.data.batch import collate
from msakit.data.sources.bclstm import load_mosi_bclstm, video_of
from msakit.data.sources.csd import load_csd_folder, read_csd, read_csd_metadata
from msakit.data.sources.label_csv import load_label_csv
from msakit.data.sources.mmsa_pickle import UnsafePickleError, load_mmsa_pickle, safe_load_pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- MMSA pickles
def mmsa_split(rng, n, lt=8, la=12, lv=10, dims=(6, 3, 4), sims=False, lengths_keys=True,
               tag=""):
    """One split in MMSA's layout (ids prefixed by ``tag``); returns (dict, true lengths)."""
    tl = rng.integers(3, lt + 1, n)
    al, vl = rng.integers(1, la + 1, n), rng.integers(1, lv + 1, n)
    text = rng.normal(size=(n, lt, dims[0])).astype(np.float32)  # BERT: non-zero even at pads
    audio = np.zeros((n, la, dims[1]), np.float32)
    vision = np.zeros((n, lv, dims[2]), np.float32)
    bert = np.zeros((n, 3, lt), np.float32)  # MMSA stores ids/mask/segments as floats
    for i in range(n):
        audio[i, : al[i]] = rng.normal(size=(al[i], dims[1])) + 5
        vision[i, : vl[i]] = rng.normal(size=(vl[i], dims[2])) + 5
        bert[i, 0, : tl[i]] = rng.integers(100, 999, tl[i])
        bert[i, 1, : tl[i]] = 1
    hi = 1.0 if sims else 3.0
    d = {
        "raw_text": np.array([f"sentence {i}" for i in range(n)], dtype=object),
        "id": np.array([f"{tag}vid{i // 3}$_${i % 3 + 1}" for i in range(n)], dtype=object),
        "text": text,
        "text_bert": bert,
        "audio": audio,
        "vision": vision,
        "annotations": np.array(["Positive"] * n, dtype=object),
        "classification_labels": np.zeros(n, np.float32),
        "regression_labels": np.round(rng.uniform(-hi, hi, n), 1).astype(np.float32),
    }
    if lengths_keys:
        d["audio_lengths"], d["vision_lengths"] = list(al), list(vl)
    if sims:
        for k in "TAV":
            d[f"regression_labels_{k}"] = rng.uniform(-1, 1, n).astype(np.float32)
    return d, {"text": tl, "audio": al, "vision": vl}


def write_mmsa(path: Path, seed=0, protocol=4, **kw):
    rng = np.random.default_rng(seed)
    data, lens = {}, {}
    for s, n in (("train", 9), ("valid", 4), ("test", 5)):
        data[s], lens[s] = mmsa_split(rng, n, tag="" if s == "train" else s, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return data, lens


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_unaligned_mosi_layout(tmp_path, protocol):
    path = tmp_path / "MOSI" / "Processed" / "unaligned_50.pkl"
    data, lens = write_mmsa(path, protocol=protocol)
    ds = load_dataset(path)
    assert ds.name == str(path.resolve()) and ds.label_scale == "mosi"
    assert load_dataset(ds.name).sizes() == ds.sizes()  # the name loads it again
    assert ds.sizes() == {"train": 9, "valid": 4, "test": 5}
    assert ds.dims == {"text": 6, "audio": 3, "vision": 4}
    tr = ds.splits["train"]
    for m in ("text", "audio", "vision"):
        np.testing.assert_array_equal(tr.lengths[m], lens["train"][m])
    np.testing.assert_array_equal(tr.y, data["train"]["regression_labels"])
    np.testing.assert_array_equal(tr.text_ids, data["train"]["text_bert"][:, 0].astype(int))
    assert tr.text_ids_mask.sum(1).tolist() == lens["train"]["text"].tolist()
    assert tr.ids[4] == "vid1$_$2" and tr.raw_text[0] == "sentence 0"
    assert tr.y_m is None
    b = collate(tr, [0, 1, 2])
    assert b.mask["audio"].sum(1).tolist() == lens["train"]["audio"][:3].tolist()


def test_mmsa_sims_layout_and_label_scale(tmp_path):
    path = tmp_path / "SIMS" / "Processed" / "unaligned_39.pkl"
    data, _ = write_mmsa(path, sims=True, dims=(6, 33, 7))
    ds = load_mmsa_pickle(path)
    assert ds.label_scale == "sims"
    assert set(ds.splits["test"].y_m) == {"text", "audio", "vision"}
    np.testing.assert_array_equal(
        ds.splits["test"].y_m["audio"], data["test"]["regression_labels_A"]
    )
    assert load_mmsa_pickle(path, label_scale="mosi").label_scale == "mosi"


def test_mmsa_aligned_without_lengths_infers_trailing_padding(tmp_path):
    path = tmp_path / "aligned_50.pkl"
    _, lens = write_mmsa(path, lt=10, la=10, lv=10, lengths_keys=False)
    ds = load_mmsa_pickle(path)
    np.testing.assert_array_equal(ds.splits["valid"].lengths["audio"], lens["valid"]["audio"])
    np.testing.assert_array_equal(ds.splits["valid"].lengths["vision"], lens["valid"]["vision"])
    np.testing.assert_array_equal(ds.splits["valid"].lengths["text"], lens["valid"]["text"])


def test_mmsa_nonfinite_replaced_and_counted_in_one_warning(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    rng = np.random.default_rng(1)
    data = {s: mmsa_split(rng, 4, tag=s)[0] for s in ("train", "valid", "test")}
    data["train"]["audio"][0, 0, :2] = -np.inf
    data["test"]["audio"][1, 0, 0] = np.nan
    data["test"]["vision"][2, 0, 1] = np.inf
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = load_mmsa_pickle(path)
    msgs = [str(w.message) for w in rec if "non-finite" in str(w.message)]
    assert len(msgs) == 1
    assert str(path) in msgs[0] and "train/audio: 2" in msgs[0]
    assert "test/audio: 1" in msgs[0] and "test/vision: 1" in msgs[0]
    assert all(np.isfinite(sd.x[m]).all() for sd in ds.splits.values() for m in sd.x)
    assert ds.splits["train"].x["audio"][0, 0, 0] == 0
    assert ds.info["nonfinite_replaced"] == {"train/audio": 2, "test/audio": 1, "test/vision": 1}


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(rng, 3, tag=s)[0] for s in ("train", "valid", "test")}
    data["train"]["annotations"] = _Evil(marker)  # hidden deep inside a valid-looking file
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickleError) as e:
        load_dataset(path)
    assert str(path) in str(e.value)
    assert "system" in str(e.value) and ("posix" in str(e.value) or "os" in str(e.value))
    assert not marker.exists()

    path2 = tmp_path / "evil2.pkl"
    path2.write_bytes(pickle.dumps({"train": _EvilEval()}))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        safe_load_pickle(path2)


def test_restricted_unpickler_loads_plain_values(tmp_path):
    obj = {"a": [1, 2.5, "x", None, True], "b": (np.float64(3.5), np.int64(2)),
           "c": np.arange(6, dtype=np.int16).reshape(2, 3), "d": {1, 2}, "e": b"raw",
           "f": np.array(["u", "v"]), "g": np.array(["id_1", "id_2"], dtype=object)}
    for proto in (2, 3, 4, 5):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(obj, protocol=proto))
        got = safe_load_pickle(p)
        assert got["a"] == obj["a"] and got["d"] == {1, 2} and got["e"] == b"raw"
        np.testing.assert_array_equal(got["c"], obj["c"])
        assert got["b"][0] == 3.5 and got["f"].tolist() == ["u", "v"]
        assert got["g"].dtype == object and got["g"].tolist() == ["id_1", "id_2"]


def test_mmsa_bad_layouts_name_the_problem(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a dict with keys"):
        load_mmsa_pickle(p)
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(rng, 3, tag=s)[0] for s in ("train", "valid", "test")}
    del data["valid"]["regression_labels"]
    p.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"split 'valid' has no 'regression_labels'"):
        load_mmsa_pickle(p)


# ---------------------------------------------------------------- CMU-MultimodalSDK .csd
def write_csd(path: Path, root: str, data: dict, dim_names="x"):
    """A computational sequence in the SDK layout: <root>/data/<vid>/{features,intervals} and
    <root>/metadata/<key> one-element variable-length byte strings."""
    str_t = h5py.special_dtype(vlen=bytes)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        dg = g.create_group("data")
        for vid, (feats, iv) in data.items():
            v = dg.create_group(vid)
            v.create_dataset("features", data=np.asarray(feats, np.float32))
            v.create_dataset("intervals", data=np.asarray(iv, np.float32))
        mg = g.create_group("metadata")
        for k, val in {"root name": f'"{root}"', "dimension names": f'["{dim_names}"]',
                       "computational sequence version": "1.0", "md5": "null"}.items():
            ds = mg.create_dataset(k, (1,), dtype=str_t)
            ds[0] = val.encode()


def csd_fixture(folder: Path, rng) -> dict:
    """3 videos x 2 segments; words every 0.5 s, audio frames every 0.1 s, vision for vA, vB."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, text, audio, vision = {}, {}, {}, {}
    for k, vid in enumerate(["vA", "vB", "vC"]):
        iv = np.array([[1.0, 3.0], [3.0, 4.0]])
        labels[vid] = (np.array([[1.5 - k], [-0.5 * k]]), iv)
        t = np.arange(10) / 2  # steps well inside their slots: no float ties at the edges
        text[vid] = (rng.normal(size=(len(t), 4)), np.stack([t + 0.05, t + 0.45], 1))
        a = np.arange(50) / 10
        af = rng.normal(size=(len(a), 3))
        af[12, 0] = -np.inf
        audio[vid] = (af, np.stack([a + 0.02, a + 0.08], 1))
        if vid != "vC":
            k5 = np.arange(5)
            vision[vid] = (rng.normal(size=(5, 2)), np.stack([k5 + 0.1, k5 + 0.9], 1))
    write_csd(folder / "TOY_Opinion_Labels.csd", "Opinion Segment Labels", labels, "sentiment")
    write_csd(folder / "TOY_TimestampedWordVectors.csd", "glove_vectors", text)
    write_csd(folder / "TOY_COVAREP.csd", "COVAREP", audio)
    write_csd(folder / "TOY_Visual_Facet_42.csd", "FACET 4.2", vision)
    (folder / "standard_folds.json").write_text(
        json.dumps({"train": ["vA"], "valid": ["vB"], "test": ["vC", "vMissing"]})
    )
    return {"labels": labels, "text": text, "audio": audio, "vision": vision}


def test_read_csd_and_metadata(tmp_path):
    src = csd_fixture(tmp_path, np.random.default_rng(0))
    got = read_csd(tmp_path / "TOY_COVAREP.csd")
    assert set(got) == {"vA", "vB", "vC"}
    np.testing.assert_allclose(got["vB"][0], src["audio"]["vB"][0].astype(np.float32))
    assert got["vB"][1].shape == (50, 2)
    meta = read_csd_metadata(tmp_path / "TOY_Opinion_Labels.csd")
    assert meta["root name"] == '"Opinion Segment Labels"'


def test_load_csd_folder_slices_segments_by_interval(tmp_path):
    src = csd_fixture(tmp_path, np.random.default_rng(0))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ds = load_dataset(tmp_path)
    assert ds.sizes() == {"train": 2, "valid": 2, "test": 2}
    assert ds.dims == {"text": 4, "audio": 3, "vision": 2}
    tr = ds.splits["train"]
    assert tr.ids == ["vA_1", "vA_2"] and tr.y.tolist() == [1.5, 0.0]
    # segment [1, 3) holds words at 1.0..2.5 (4) and frames at 1.0..2.9 (20), vision 1..2 (2);
    # segment [3, 4) words 3.0, 3.5 (2), frames 3.0..3.9 (10), vision 3 (1)
    assert tr.lengths["text"].tolist() == [4, 2]
    assert tr.lengths["audio"].tolist() == [20, 10]
    assert tr.lengths["vision"].tolist() == [2, 1]
    np.testing.assert_allclose(tr.x["text"][1, :2], src["text"]["vA"][0][6:8], atol=1e-6)
    assert not ds.splits["test"].present["vision"].any()  # vC has no vision
    assert ds.splits["test"].present["text"].all()
    assert np.isfinite(tr.x["audio"]).all()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        capped = load_csd_folder(tmp_path, max_len={"audio": 8})
    assert capped.splits["train"].lengths["audio"].tolist() == [8, 8]


def test_csd_errors(tmp_path):
    with h5py.File(tmp_path / "bad.csd", "w") as f:
        f.create_group("x")
    with pytest.raises(ValueError, match="not a CMU-MultimodalSDK"):
        read_csd(tmp_path / "bad.csd")
    only = tmp_path / "only_labels"
    only.mkdir()
    write_csd(only / "L_labels.csd", "Opinion Segment Labels",
              {"v": (np.zeros((1, 1)), np.array([[0.0, 1.0]]))})
    with pytest.raises(FileNotFoundError, match="no feature .csd"):
        load_csd_folder(only)


# ---------------------------------------------------------------- bc-LSTM CSV set
def bclstm_fixture(root: Path, rng, flip_sign: bool = False) -> dict:
    """6 train videos and 2 test videos x 3 utterances, in the bc-LSTM data layout."""
    d = root / "mosi-bclstm"
    for sub in ("audio", "text", "video"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (root / "cmu-mosi").mkdir(parents=True, exist_ok=True)
    vids = [f"v_{k}x" for k in range(8)]  # ids with '_' inside, as in MOSI
    ids = [f"{v}_{i + 1}" for v in vids for i in range(3)]
    y = np.round(rng.uniform(-3, 3, len(ids)), 2)
    y[0] = 0.0  # label 0 counts as positive (binary 1)
    order = rng.permutation(len(ids))  # transcripts.csv is not in split order
    tr_rows = [int(np.flatnonzero(order == j)[0]) for j in range(18)]
    te_rows = [int(np.flatnonzero(order == j)[0]) for j in range(18, 24)]
    pd.DataFrame({0: [ids[j] for j in order], 1: [f"TEXT {j}" for j in order],
                  2: 93, 3: [int(y[j] >= 0) for j in order]}).to_csv(
        d / "transcripts.csv", header=False, index=False)
    for s, rows in (("train", tr_rows), ("test", te_rows)):
        src = [order[r] for r in rows]
        binary = np.array([float(y[j] >= 0) for j in src])
        if flip_sign and s == "train":
            binary[0] = 1 - binary[0]
        for p, dim in (("audio", 73), ("text", 100), ("video", 100)):
            feats = rng.normal(size=(len(rows), dim)) * (50 if p == "audio" else 1) + 3
            pd.DataFrame(np.column_stack([feats, binary])).to_csv(
                d / p / f"{p}_{s}0.csv", header=False, index=False)
            if p == "text":
                pd.DataFrame(np.column_stack([rows, feats])).to_csv(
                    d / f"text_{s}.csv", header=False, index=False)
    write_csd(root / "cmu-mosi" / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels",
              {v: (y[3 * k: 3 * k + 3, None], np.array([[0, 1], [1, 2], [2, 3]]))
               for k, v in enumerate(vids)})
    return {"ids": ids, "y": y}


def test_bclstm_loader_on_fixture(tmp_path):
    src = bclstm_fixture(tmp_path, np.random.default_rng(0))
    ds = load_mosi_bclstm(tmp_path, verify=False, valid_fraction=0.2)
    sizes = ds.sizes()
    assert sum(sizes.values()) == 24 and sizes["test"] == 6
    assert sizes["valid"] == 3  # round(0.2 * 6 videos) = 1 whole video
    assert ds.dims == {"audio": 73, "text": 100, "vision": 100}
    tv = {video_of(i) for i in ds.splits["train"].ids}
    vv = {video_of(i) for i in ds.splits["valid"].ids}
    assert tv and vv and not tv & vv
    assert {video_of(i) for i in ds.splits["test"].ids} == {"v_6x", "v_7x"}
    label = dict(zip(src["ids"], src["y"], strict=True))
    for sd in ds.splits.values():
        np.testing.assert_allclose(sd.y, [label[i] for i in sd.ids], atol=1e-6)
        assert sd.x["audio"].shape[1] == 1 and (sd.lengths["text"] == 1).all()
    train_audio = ds.splits["train"].x["audio"][:, 0]
    np.testing.assert_allclose(train_audio.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train_audio.std(0), 1, atol=1e-3)
    assert ds.splits["test"].raw_text[0].startswith("TEXT")
    # the same seed gives the same validation videos; another seed may not
    again = load_mosi_bclstm(tmp_path, verify=False, valid_fraction=0.2)
    assert again.splits["valid"].ids == ds.splits["valid"].ids
    raw = load_mosi_bclstm(tmp_path, verify=False, standardize=False)
    assert raw.splits["train"].x["audio"].std() > 10


def test_bclstm_sign_disagreement_is_an_error(tmp_path):
    bclstm_fixture(tmp_path, np.random.default_rng(0), flip_sign=True)
    with pytest.raises(ValueError, match="disagree with the sign"):
        load_mosi_bclstm(tmp_path, verify=False)


# ---------------------------------------------------------------- label.csv + text encoder
SENTS = ["it was really good", "i hated every minute of it", "the plot was fine i guess",
         "what a wonderful surprise", "boring", "not bad at all, actually quite nice",
         "terrible acting and worse music", "okay"]


def write_label_csv(path: Path, mosei_style=True, sims=False, mode_valid="dev") -> pd.DataFrame:
    modes = ["train", "train", "train", mode_valid, mode_valid, "test", "test", "train"]
    labels = [2.4, -2.8, 0.2, 2.0, -1.0, 1.2, -3.0, 0.0]
    df = pd.DataFrame({"text": SENTS, "label": labels, "mode": modes})
    if sims:
        df["label"] = df["label"] / 3
        for k in "TAV":
            df[f"label_{k}"] = np.round(df["label"] * 0.5, 3)
    if mosei_style:
        df.insert(0, "clip_id", [f"{i}_{i * 7}" for i in range(8)])
        df.insert(0, "video_id", ["-vid1"] * 4 + ["vid_2"] * 4)
    else:
        df.insert(0, "id", [f"v{i // 2}_{i % 2 + 1}" for i in range(8)])
    df.to_csv(path, index=False)
    return df


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MSAKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_label_csv_with_packaged_encoder_and_cache(tmp_path, cache, monkeypatch):
    path = tmp_path / "label.csv"
    write_label_csv(path)
    ds = load_dataset(path, progress=False)
    assert ds.sizes() == {"train": 4, "valid": 2, "test": 2} and ds.label_scale == "mosi"
    assert ds.dims == {"text": 384, "audio": 1, "vision": 1}
    assert ds.present_modalities == ("text",)
    tr = ds.splits["train"]
    assert tr.ids[0] == "-vid1_0_0" and tr.raw_text[1] == SENTS[1]
    assert tr.y.tolist() == pytest.approx([2.4, -2.8, 0.2, 0.0])
    assert (tr.lengths["text"] == tr.text_ids_mask.sum(1)).all()
    assert (tr.lengths["audio"] == 0).all() and not tr.present["vision"].any()
    assert tr.text_ids[0, 0] == 101  # [CLS] of the MiniLM vocabulary
    # zero past each sentence's length, informative before it
    L = tr.x["text"].shape[1]
    pad = np.arange(L)[None] >= tr.lengths["text"][:, None]
    assert (tr.x["text"][pad] == 0).all() and np.abs(tr.x["text"][~pad]).mean() > 0.05
    b = collate(tr, [0, 1])
    assert not b.present["audio"].any() and b.observed("audio").sum() == 0
    assert len(list((cache / "text").glob("*.npz"))) == 1

    from msakit.features import text as text_mod

    def boom(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(text_mod.TextEncoder, "encode", boom)
    again = load_dataset(tmp_path, progress=False)  # the folder holding label.csv
    np.testing.assert_array_equal(again.splits["test"].x["text"], ds.splits["test"].x["text"])
    with pytest.raises(AssertionError, match="cache"):
        load_label_csv(path, max_length=8, progress=False)  # another key -> recompute


def test_label_csv_sims_columns_and_limit(tmp_path, cache):
    path = tmp_path / "label.csv"
    df = write_label_csv(path, mosei_style=False, sims=True, mode_valid="valid")
    ds = load_label_csv(path, limit=1, progress=False, max_length=16)
    assert ds.sizes() == {"train": 1, "valid": 1, "test": 1}
    assert ds.label_scale == "sims"
    assert ds.splits["valid"].y_m["vision"][0] == pytest.approx(df["label_V"][3])
    assert ds.splits["train"].x["text"].shape[1] <= 16


def test_label_csv_errors(tmp_path, cache):
    p = tmp_path / "label.csv"
    pd.DataFrame({"id": ["a"], "text": ["x"], "label": [1.0]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"missing columns \['mode'\]"):
        load_label_csv(p)
    pd.DataFrame({"id": ["a"], "text": ["x"], "label": [1.0], "mode": ["holdout"]}).to_csv(
        p, index=False)
    with pytest.raises(ValueError, match="'holdout'"):
        load_label_csv(p)
    pd.DataFrame({"id": ["a"], "text": ["x"], "label": ["high"], "mode": ["train"]}).to_csv(
        p, index=False)
    with pytest.raises(ValueError, match="row 2 is 'high'"):
        load_label_csv(p)


def test_text_encoder_shapes_and_determinism():
    from msakit.features.text import TextEncoder, packaged_minilm_path

    assert (packaged_minilm_path() / "config.json").is_file()
    enc = TextEncoder(max_length=12)
    feats, mask, ids = enc.encode(SENTS[:3])
    assert feats.shape == (3, mask.shape[1], 384) and mask.shape[1] <= 12
    assert mask.sum(1).tolist() == [6, 8, 8]  # [CLS] words [SEP]
    f2, _, _ = TextEncoder(max_length=12).encode(SENTS[:3][::-1])
    np.testing.assert_allclose(f2[::-1], feats, atol=1e-5)  # order and batching do not matter
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(max_length=1)
