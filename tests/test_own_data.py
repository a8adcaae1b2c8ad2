"""Own data end to end (issue 8): classification labels through the CLI, normalisation by
default (stored with the model, scale-invariant training), ICT-MMMO from MFN's release."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import msakit
from msakit.cli import main as cli_main
from msakit.train.engine import TrainConfig, fit_seed, load_run_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_classes(root: Path, k: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", 90), ("valid", 30), ("test", 30)):
        y = rng.integers(0, k, n)
        audio = rng.normal(size=(n, 7, 4)).astype("f4")
        audio[:, :, 0] += 1.5 * y[:, None]  # learnable
        vision = rng.normal(size=(n, 5, 3)).astype("f4")
        np.savez(root / f"{split}.npz", audio=audio, vision=vision, labels=y,
                 ids=np.array([f"{split}{i}" for i in range(n)]))
    (root / "meta.json").write_text(json.dumps({"classes": ["neg", "neu", "pos"][:k]}))
    return root


def test_classification_dataset_trains_evaluates_and_sweeps_through_the_cli(tmp_path, capsys):
    data = write_classes(tmp_path / "cls")
    ds = msakit.load_dataset(data)
    assert ds.task == "classification" and ds.classes == ("neg", "neu", "pos")
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--model", "late_fusion", "--dataset", str(data), "--out",
                  str(tmp_path / "run"), "--seeds", "1", "2", "--epochs", "6"])
    assert e.value.code in (0, None)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(s["test"]) >= {"acc", "f1_weighted", "f1_macro"} and "mae" not in s["test"]
    assert s["test"]["acc"]["mean"] > 0.6  # chance is 1/3
    cfg = json.loads((tmp_path / "run" / "seed_1" / "config.json").read_text())
    assert cfg["n_classes"] == 3 and cfg["train"]["select"] == "acc/max"
    model, _ = load_run_model(tmp_path / "run" / "seed_1")
    b = msakit.data.collate(ds.splits["test"], np.arange(4))
    assert model(b).pred.shape == (4, 3)
    with pytest.raises(SystemExit):
        cli_main(["robustness", "--run", str(tmp_path / "run"), "--protocol", "modality",
                  "--out", str(tmp_path / "sw")])
    out = capsys.readouterr().out
    assert "acc" in out
    levels = json.loads((tmp_path / "sw" / "robustness.json").read_text())["levels"]
    assert levels == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]  # two modalities: stops at 0.5


def _regression_folder(root: Path, scale: float, shift: float) -> Path:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for split, n in (("train", 80), ("valid", 24), ("test", 24)):
        audio = rng.normal(size=(n, 6, 3)).astype("f8")
        lens = rng.integers(2, 7, n)
        audio[np.arange(6)[None, :] >= lens[:, None]] = 0
        y = np.clip(2.5 * np.tanh(audio[:, :, 0].sum(1) / np.sqrt(lens)), -3, 3)
        vision = rng.normal(size=(n, 4, 2))
        np.savez(root / f"{split}.npz", audio=(audio * scale + shift * (audio != 0)).astype("f4"),
                 lengths_audio=lens, vision=vision.astype("f4"), labels=y.astype("f4"),
                 ids=np.array([f"{split}{i}" for i in range(n)]))
    return root


def test_normalisation_uses_observed_training_steps_and_makes_training_scale_free(tmp_path):
    a = msakit.load_dataset(_regression_folder(tmp_path / "a", 1.0, 0.0))
    b = msakit.load_dataset(_regression_folder(tmp_path / "b", 250.0, 40.0))
    ra = fit_seed("late_fusion", a, 1, tmp_path / "ra", TrainConfig(epochs=3))
    rb = fit_seed("late_fusion", b, 1, tmp_path / "rb", TrainConfig(epochs=3))
    assert ra.config["normalize"] == "zscore"
    # the same learning problem at another scale gives the same model, up to float error
    assert rb.metrics["test"]["mae"] == pytest.approx(ra.metrics["test"]["mae"], rel=1e-3)
    # statistics come from observed training steps only (padding excluded), stored in model.pt
    model, _ = load_run_model(tmp_path / "rb")
    tr = b.splits["train"]
    obs = np.arange(tr.x["audio"].shape[1])[None, :] < tr.lengths["audio"][:, None]
    want = tr.x["audio"][obs].astype(np.float64).mean(0)
    assert np.allclose(model.norm_mean_audio.numpy(), want, rtol=1e-4)
    assert bool(model.norm_on)
    rn = fit_seed("late_fusion", b, 1, tmp_path / "rn", TrainConfig(epochs=3), {"normalize": "none"})
    assert rn.config["normalize"] == "none"
    assert not bool(load_run_model(tmp_path / "rn")[0].norm_on)


def test_standardised_datasets_are_left_alone(tmp_path):
    ds = msakit.load_dataset(_regression_folder(tmp_path / "a", 1.0, 0.0))
    ds.standardized = True
    r = fit_seed("late_fusion", ds, 1, tmp_path / "r", TrainConfig(epochs=1))
    assert r.config["normalize"] == "none"


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "mfn-mmmo").is_dir(), reason="../shared/data/mfn-mmmo absent")
def test_ict_mmmo_trains_past_the_median_predictor_without_hand_work(tmp_path):
    torch.manual_seed(0)
    ds = msakit.load_dataset("mfn-mmmo")
    from msakit.evaluate.baselines import median_predictor

    median = median_predictor(ds)["mae"]
    assert median == pytest.approx(1.18125)
    s = msakit.train("late_fusion", ds, tmp_path, seeds=[1111], epochs=12)
    assert s["_meta"]["normalize"] == "zscore"
    assert s["test"]["mae"]["mean"] < median - 0.05
