"""Domain runs in robustness/matrix sweeps (leave-one-domain-out) and datasets joined as
domains (``join:A,B``) with explicit label scales (issue 11)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import msakit
from msakit.data.sources.synthetic import make_synthetic_domains
from msakit.errors import ConfigError
from msakit.evaluate.matrix import domain_splits, run_matrix
from msakit.evaluate.robustness import robustness, sweep
from msakit.fileio import read_json

torch.set_num_threads(1)
SMALL = dict(n=(40, 12, 20))
TINY = {"d": 16, "heads": 2, "head_hidden": 16}


@pytest.fixture(scope="module")
def ds():
    return make_synthetic_domains(seed=3, **SMALL)


@pytest.fixture(scope="module")
def runs(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("domruns")
    out = {}
    for name, dom in (("a", "studio,phone->webcam"), ("b", "studio,phone->webcam"),
                      ("c", "studio,webcam->phone")):
        msakit.train("late_fusion", ds, root / name, seeds=[1], epochs=1, domain=dom,
                     overrides=TINY)
        out[name] = root / name
    return out


def test_robustness_sweeps_a_domain_run_on_its_target_rows(ds, runs, tmp_path):
    res = robustness([("x", runs["a"])], "modality", "0,0.3", tmp_path / "r", dataset=ds)
    assert res.meta["n_samples"] == 20 and res.meta["domain"] == "studio,phone->webcam"
    # level 0 is the clean target split: the run's own test numbers, and the target oracle
    s = msakit.train("late_fusion", ds, runs["a"], seeds=[1], epochs=1,
                     domain="studio,phone->webcam", overrides=TINY)  # reused, not retrained
    row = res.summary[(res.summary.model == "x") & (res.summary.level == "0")
                      & (res.summary.metric == "mae")]
    assert row["mean"].iloc[0] == pytest.approx(s["test"]["mae"]["mean"], abs=1e-5)
    orc = res.summary[(res.summary.model == "oracle") & (res.summary.level == "0")
                      & (res.summary.metric == "mae")]
    assert orc["mean"].iloc[0] == pytest.approx(s["oracle"]["test"]["mae"]["mean"], abs=1e-5)
    assert "studio,phone->webcam" in (tmp_path / "r/robustness.md").read_text()
    src = sweep([runs["a"]], "frames", "0", split="test_source", dataset=ds)
    assert src.meta["n_samples"] == 40


def test_sweep_refuses_mixed_domain_splits_and_the_domain_protocol(ds, runs):
    with pytest.raises(ConfigError, match="different domain splits") as e:
        sweep([runs["a"], runs["c"]], "modality", "0", dataset=ds)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="matrix --protocols domain"):
        sweep([runs["a"]], "domain", "0", dataset=ds)
    sweep([runs["a"], runs["b"]], "modality", "0", dataset=ds)  # one split: fine


def test_results_table_names_each_runs_domain_split_and_its_own_oracle(runs):
    from typer.testing import CliRunner

    from msakit.cli import app
    from msakit.evaluate.tables import collect_results

    df = collect_results([runs["a"], runs["c"]])
    dom = dict(zip(df["run"], df["domain"], strict=True))
    assert dom["a"] == "studio,phone->webcam" and dom["c"] == "studio,webcam->phone"
    orc = df[df["model"] == "oracle"].set_index("domain")
    assert len(orc) == 2  # one oracle per target domain, not the two pooled
    for key, run in (("studio,phone->webcam", "a"), ("studio,webcam->phone", "c")):
        want = read_json(runs[run] / "seed_1" / "metrics.json")["oracle/test"]["mae"]
        assert orc.loc[key, "mae_mean"] == pytest.approx(want) and orc.loc[key, "n_seeds"] == 1
    src = collect_results([runs["a"]], split="test_source")
    assert src["mae_mean"].iloc[0] == pytest.approx(
        read_json(runs["a"] / "seed_1" / "metrics.json")["test_source"]["mae"])
    r = CliRunner().invoke(app, ["results", str(runs["a"]), str(runs["c"]), "--metrics", "mae"])
    assert r.exit_code == 0 and "| domain |" in r.output
    assert "oracle (studio,webcam->phone)" in r.output


def test_domain_splits_grammar(ds):
    assert domain_splits(ds, ["domain"]) == [
        "phone,webcam->studio", "studio,webcam->phone", "studio,phone->webcam"]
    assert domain_splits(ds, ["domain:0->2", "domain:studio->webcam"]) == ["0->2", "studio->webcam"]
    with pytest.raises(ConfigError, match="no domain groups"):
        domain_splits(msakit.load_dataset("synthetic-tiny", n=(8, 4, 4)), ["domain"])
    with pytest.raises(ConfigError, match="unknown domain|out of range|known"):
        domain_splits(ds, ["domain:studio->moon"])


def test_matrix_leave_one_domain_out_with_a_missing_data_sweep(ds, tmp_path):
    out = tmp_path / "m"
    res = run_matrix(ds, ["late_fusion"], out, protocols=["domain", "modality"], seeds=[1],
                     epochs=1, overrides={"late_fusion": TINY}, levels={"modality": "0,0.3"},
                     log=lambda m: None)
    table = pd.read_csv(out / "domain/domains.csv")
    assert table.target.tolist() == ["studio", "phone", "webcam"]
    for col in ("target_mae", "oracle_mae", "in_domain_mae", "target_acc2_non0", "oracle_acc2_non0"):
        assert np.isfinite(table[col]).all(), col
    assert (table.oracle_mae < table.target_mae).all()  # 1 epoch of ERM is far from Bayes
    # each split's run matches a plain `msakit train --domain` of the same split
    run = out / "runs/late_fusion__clean__to-webcam"
    cfg = read_json(run / "seed_1/config.json")
    assert cfg["train"]["domain"] == "studio,phone->webcam"
    s = read_json(run / "summary.json")
    row = table[table.target == "webcam"].iloc[0]
    assert row.target_mae == pytest.approx(s["test"]["mae"]["mean"])
    assert row.in_domain_mae == pytest.approx(s["test_source"]["mae"]["mean"])
    assert row.oracle_mae == pytest.approx(s["oracle"]["test"]["mae"]["mean"])
    # the modality sweep runs over each split's target rows
    protos = set(res["summary"].protocol)
    assert {"domain", "domain_source", "modality [studio,phone->webcam]"} <= protos
    meta = read_json(out / "modality/to-webcam/robustness.json")
    assert meta["domain"] == "studio,phone->webcam" and meta["n_samples"] == 20
    md = (out / "matrix.md").read_text()
    assert "mosi [-3, 3] label scale" in md and "in-domain mae" in md
    assert (out / "domain/domains.md").exists()
    # resuming reuses every run and sweep
    again = run_matrix(ds, ["late_fusion"], out, protocols=["domain", "modality"], seeds=[1],
                       epochs=1, overrides={"late_fusion": TINY}, levels={"modality": "0,0.3"},
                       log=lambda m: None)
    pd.testing.assert_frame_equal(again["summary"], res["summary"], check_dtype=False, rtol=1e-8)


# --------------------------------------------------------------------------- join:A,B
def _variant(base, name, *, y=None, scale="mosi", encoder=None, audio_dim=None, classes=None):
    """A copy of ``base`` under another name: labels ``y(split_y)``, its scale, an encoder
    recorded for its text features, another audio dim."""
    from msakit.data.batch import SplitData
    from msakit.data.dataset import MSADataset

    splits = {}
    for s, sd in base.splits.items():
        x = dict(sd.x)
        if audio_dim is not None:
            x["audio"] = np.zeros((len(sd), sd.x["audio"].shape[1], audio_dim), np.float32)
        splits[s] = SplitData(x=x, lengths=dict(sd.lengths), y=(y or (lambda v: v))(sd.y),
                              ids=[f"{name}-{i}" for i in sd.ids], present=dict(sd.present))
    info = {"encoder": encoder} if encoder else {}
    return MSADataset(name=name, splits=splits, label_scale=scale, info=info, classes=classes)


@pytest.fixture(scope="module")
def catalog():
    from msakit.data.registry import DATASETS, DatasetEntry

    base = msakit.load_dataset("synthetic-tiny", n=(12, 6, 8))
    made = {
        "tj-a": _variant(base, "tj-a", encoder="enc-1"),
        "tj-b": _variant(base, "tj-b", encoder="enc-1"),
        "tj-sims": _variant(base, "tj-sims", y=lambda v: v / 3, scale="sims", encoder="enc-1"),
        "tj-enc": _variant(base, "tj-enc", encoder="enc-2"),
        "tj-dim": _variant(base, "tj-dim", audio_dim=5, encoder="enc-1"),
    }
    for n, d in made.items():
        if n not in DATASETS:
            DATASETS.register(n, DatasetEntry(n, lambda d=d: d, "test", synthetic=True))
    return made


def test_join_sets_one_domain_per_dataset(catalog):
    j = msakit.load_dataset("join:tj-a,tj-b")
    assert j.name == "join:tj-a,tj-b" and j.info["domains"] == ["tj-a", "tj-b"]
    assert j.sizes() == {"train": 24, "valid": 12, "test": 16}
    for s in ("train", "valid", "test"):
        assert np.bincount(j.splits[s].domain).tolist() == [len(catalog["tj-a"].splits[s])] * 2
    assert j.splits["train"].ids[0].startswith("tj-a/") and j.label_scale == "mosi"
    assert "unchanged" in j.info["label_scale_map"]["tj-b"] and j.info["encoder"] == "enc-1"
    # a domain split of a join names the datasets
    from msakit.corrupt import parse_domain

    v = parse_domain("tj-a->tj-b").view(j)
    assert set(v.splits["test"].domain) == {1} and set(v.splits["train"].domain) == {0}


def test_join_refuses_different_features_and_scales_in_one_line(catalog):
    for spec, match in (("join:tj-a,tj-enc", r"modality 'text' differs \(tj-a: text encoder enc-1, "
                                             r"tj-enc: text encoder enc-2\)"),
                        ("join:tj-a,tj-dim", r"modality 'audio' differs"),
                        ("join:tj-a,tj-sims", r"label scales differ \(tj-a: mosi \[-3, 3\], "
                                              r"tj-sims: sims \[-1, 1\]\).*scale=mosi"),
                        ("join:tj-a", "at least two"),
                        ("join:tj-a,tj-a", "named twice"),
                        ("join:tj-a,tj-sims:scale=kelvin", "expected scale=S")):
        with pytest.raises(ConfigError, match=match) as e:
            msakit.load_dataset(spec)
        assert "\n" not in str(e.value), spec


def test_join_maps_label_scales_onto_the_declared_one(catalog):
    j = msakit.load_dataset("join:tj-a,tj-sims:scale=mosi")
    assert j.label_scale == "mosi" and j.label_range == (-3.0, 3.0)
    tr = j.splits["train"]
    np.testing.assert_allclose(tr.y[tr.domain == 1], tr.y[tr.domain == 0], atol=1e-5)
    assert "sims [-1, 1] -> mosi [-3, 3], y' = 3*y" in j.info["label_scale_map"]["tj-sims"]
    s = msakit.load_dataset("join:tj-a,tj-sims:scale=sims")
    assert s.label_scale == "sims" and float(np.abs(s.splits["train"].y).max()) <= 1
    assert "mosi [-3, 3] -> sims [-1, 1]" in s.info["label_scale_map"]["tj-a"]


def test_join_trains_across_datasets_and_evaluates_by_name(catalog, tmp_path):
    from msakit.evaluate.runs import evaluate_runs

    s = msakit.train("late_fusion", "join:tj-a,tj-sims:scale=mosi", tmp_path / "r", seeds=[1],
                     epochs=1, domain="tj-a->tj-sims", overrides=TINY)
    assert s["_meta"]["dataset"] == "join:tj-a,tj-sims:scale=mosi" and "test_source" in s
    assert s["_meta"]["label_scale"] == "mosi [-3, 3]" and "tj-sims" in s["_meta"]["label_scale_map"]
    again = evaluate_runs(tmp_path / "r")  # reloads the join by its name
    assert again["test"]["mae"]["values"] == s["test"]["mae"]["values"]


def test_join_real_text_datasets_domain_counts():
    """MOSI and MOSEI transcripts as two domains (a few rows per split: loading only)."""
    from msakit.data.registry import DATASETS, data_root

    entry = DATASETS.get("mosi-text")
    root = data_root(entry)
    if not all((root / f).exists() for f in (*entry.files, *DATASETS.get("mosei-text").files)):
        pytest.skip("mosi-text / mosei-text label.csv not in the shared data folder")
    j = msakit.load_dataset("join:mosi-text,mosei-text", limit=3, progress=False)
    assert j.info["domains"] == ["mosi-text", "mosei-text"]
    for s in ("train", "valid", "test"):
        assert np.bincount(j.splits[s].domain).tolist() == [3, 3]
    assert j.label_scale == "mosi" and j.dims["text"] == msakit.load_dataset(
        "mosi-text", limit=3, progress=False).dims["text"]


def test_cli_keeps_commas_of_a_domain_protocol():
    from msakit.cli import _split_protocols, expand_list_options

    argv = ["matrix", "--protocols", "domain:a,b->c", "frames,modality", "--seeds", "1,2"]
    assert expand_list_options(argv) == [
        "matrix", "--protocols", "domain:a,b->c", "--protocols", "frames", "--protocols",
        "modality", "--seeds", "1", "--seeds", "2"]
    assert _split_protocols(["domain:a,b->c", "frames,subset"]) == ["domain:a,b->c", "frames", "subset"]
