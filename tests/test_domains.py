"""The domain protocol (issue 11): synthetic-domains, ``domain:A,B->C`` views, training on the
sources only (target rows poisoned with NaN change nothing), evaluation and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msakit
from msakit.corrupt import DomainSplit, parse_domain, parse_protocol, split_domain
from msakit.data.batch import collate, concat_splits
from msakit.data.dataset import MSADataset
from msakit.data.sources.synthetic import DOMAIN_PRESETS, make_synthetic_domains
from msakit.errors import ConfigError
from msakit.fileio import read_json
from msakit.train.engine import TrainConfig

torch.set_num_threads(1)
SMALL = dict(n=(40, 12, 20))


@pytest.fixture(scope="module")
def ds():
    return make_synthetic_domains(seed=3, **SMALL)


def test_synthetic_domains_groups_names_and_oracle(ds):
    assert ds.info["domains"] == list(DOMAIN_PRESETS) == ["studio", "phone", "webcam"]
    for s, n in zip(("train", "valid", "test"), SMALL["n"], strict=True):
        sd = ds.splits[s]
        assert len(sd) == 3 * n and np.bincount(sd.domain).tolist() == [n] * 3
    assert make_synthetic_domains(seed=3, **SMALL).content_hash() == ds.content_hash()
    assert msakit.load_dataset("synthetic-domains").sizes() == {"train": 720, "valid": 180, "test": 360}
    # the label prior differs as declared (tilt +0.3 / -0.3)
    big = make_synthetic_domains(seed=0, n=(400, 2, 2)).splits["train"]
    means = [big.y[big.domain == k].mean() for k in range(3)]
    assert means[2] < means[0] < means[1]
    # each domain's oracle undoes its own shift and scale: the studio law on phone rows is worse
    sd = make_synthetic_domains(seed=1, n=(2, 2, 150)).splits["test"]
    b = collate(sd, np.arange(len(sd)))
    full = make_synthetic_domains(seed=1, n=(2, 2, 150))
    own = full.oracle(b)
    studio = full.oracle.oracles[0](b)
    phone = sd.domain == 1
    err_own = np.abs(own[phone] - sd.y[phone]).mean()
    err_studio = np.abs(studio[phone] - sd.y[phone]).mean()
    assert err_own < 0.75 and err_studio > err_own + 0.2
    np.testing.assert_array_equal(own[sd.domain == 0], studio[sd.domain == 0])


def test_domain_view_keeps_target_train_and_valid_out(ds):
    v = parse_domain("studio,phone->webcam").view(ds)
    assert isinstance(v, MSADataset) and set(v.splits) == {"train", "valid", "test", "test_source"}
    assert set(v.splits["train"].domain) == {0, 1} and set(v.splits["valid"].domain) == {0, 1}
    assert set(v.splits["test"].domain) == {2} and set(v.splits["test_source"].domain) == {0, 1}
    assert v.oracle is ds.oracle and v.info["target"] == [2]
    # the same by index, and with the protocol prefix
    assert parse_domain("domain:0,1->2").view(ds).splits["train"].ids == v.splits["train"].ids


def test_domain_errors_are_one_line_naming_what_is_wrong(ds):
    with pytest.raises(ConfigError, match=r"unknown domain 'mars'; known domains: \['studio', 'phone', 'webcam'\]"):
        parse_domain("studio->mars").view(ds)
    with pytest.raises(ConfigError, match="index 5 out of range"):
        parse_domain("0->5").view(ds)
    with pytest.raises(ConfigError, match="A,B->C"):
        TrainConfig(domain="studio")
    with pytest.raises(ConfigError, match="no domain labels"):
        parse_domain("0->1").view(msakit.load_dataset("synthetic-tiny", n=(8, 4, 4)))
    a = ds.splits["test"]
    other = make_synthetic_domains(seed=0, n=(2, 2, 2), modalities={"audio": {"dim": 5}})
    with pytest.raises(ConfigError, match="modality 'audio' differs"):
        concat_splits([a, other.splits["test"]])
    with pytest.raises(ConfigError, match="at most one domain"):
        split_domain(parse_protocol("domain:0->1+domain:0->2"))


def test_domain_protocol_registered_and_chains(ds):
    p = parse_protocol("domain:0,1->2+modality:0.3")
    dom, rest = split_domain(p)
    assert isinstance(dom, DomainSplit) and rest.spec == "modality:0.3"
    b = collate(ds.splits["test"], np.arange(len(ds.splits["test"])))
    out = p(b, seed=0)  # as a batch protocol: the target rows, then missing modalities
    assert (out.domain == 2).all() and out.size == 20
    assert any(r.float().mean() > 0 for r in out.corruption.missing_rate.values())


def _poison(ds: MSADataset, target: int) -> MSADataset:
    splits = {}
    for s, sd in ds.splits.items():
        sd = sd.subset(np.arange(len(sd)))  # a copy
        if s != "test":
            rows = sd.domain == target
            for m in sd.x:
                sd.x[m][rows] = np.nan  # features of the target's train and valid rows
        splits[s] = sd
    return MSADataset(ds.name + "-poisoned", splits, oracle=ds.oracle, info=ds.info)


def test_target_train_and_valid_rows_are_never_touched(ds, tmp_path):
    """Training with every target train/valid feature NaN gives the same weights and metrics:
    those rows reach neither the normaliser, nor training, nor checkpoint selection."""
    kw = dict(seeds=[1], epochs=2, domain="studio,phone->webcam",
              overrides=dict(d=16, heads=2, head_hidden=16))
    clean = msakit.train("late_fusion", ds, tmp_path / "clean", **kw)
    bad = msakit.train("late_fusion", _poison(ds, 2), tmp_path / "bad", **kw)
    for split in ("train", "valid", "test", "test_source"):
        assert clean[split]["mae"]["values"] == bad[split]["mae"]["values"], split
    w1 = torch.load(tmp_path / "clean/seed_1/model.pt", weights_only=True)
    w2 = torch.load(tmp_path / "bad/seed_1/model.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert np.isfinite(clean["test"]["mae"]["mean"]) and "test_source" in clean
    assert clean["oracle"]["test"]["mae"]["mean"] > 0
    cfg = read_json(tmp_path / "clean/seed_1/config.json")
    assert cfg["train"]["domain"] == "studio,phone->webcam" and cfg["dataset"] == ds.name
    assert clean["_meta"]["domain"] == "studio,phone->webcam"
    # the poison is real: without the domain split the normaliser would read it
    model = msakit.create_model("late_fusion", ds.dims, d=16, heads=2)
    model.fit_normalizer(_poison(ds, 2).splits["train"])
    assert not torch.isfinite(model.norm_mean_text).all()


def test_domain_in_corrupt_and_eval_with_missing_modalities(ds, tmp_path):
    from msakit.evaluate.runs import evaluate_runs

    s = msakit.train("late_fusion", ds, tmp_path / "r", seeds=[1], epochs=1,
                     corrupt="domain:0->1,2+frames:0.2", overrides=dict(d=16, heads=2))
    cfg = read_json(tmp_path / "r/seed_1/config.json")
    assert cfg["train"]["domain"] == "0->1,2" and cfg["train"]["corrupt"] == "frames:0.2"
    # eval loads the dataset by name: register this one under its name for the test
    from msakit.data.registry import DATASETS, DatasetEntry

    if ds.name not in DATASETS:
        DATASETS.register(ds.name, DatasetEntry(ds.name, lambda: ds, "test", synthetic=True))
    clean = evaluate_runs(tmp_path / "r")
    assert clean["test"]["mae"]["values"] == s["test"]["mae"]["values"]
    missing = evaluate_runs(tmp_path / "r", protocol="modality:0.3")
    assert set(missing) >= {"test", "test_source"}
    assert missing["test"]["mae"]["values"] != s["test"]["mae"]["values"]
    with pytest.raises(ConfigError, match="drop the domain part"):
        evaluate_runs(tmp_path / "r", protocol="domain:0->2")
