"""The training engine: seeds, determinism, run folders, resume after a kill, selection."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import msakit
from msakit.errors import RunError
from msakit.models.late_fusion import LateFusion
from msakit.train.engine import TrainConfig, fit_seed, load_run_model, predict


def test_train_writes_summary_and_run_folders(toy_dataset, tmp_path):
    s = msakit.train("late_fusion", toy_dataset, tmp_path, seeds=[1, 2], epochs=2)
    summ = json.loads((tmp_path / "summary.json").read_text())
    assert summ["test"]["acc2_non0"]["n"] == 2
    vals = summ["test"]["mae"]["values"]
    assert summ["test"]["mae"]["mean"] == pytest.approx(np.mean(vals))
    assert summ["test"]["mae"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert s["_meta"]["seeds"] == [1, 2]
    for seed in (1, 2):
        d = tmp_path / f"seed_{seed}"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["seed"] == seed and cfg["model"] == "late_fusion"
        assert cfg["dims"] == {"text": 8, "audio": 3, "vision": 4}
        assert set(json.loads((d / "metrics.json").read_text())) >= {"train", "valid", "test"}
        # the selected weights load with weights_only=True
        state = torch.load(d / "model.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_same_seed_same_numbers(toy_dataset, tmp_path):
    a = fit_seed("late_fusion", toy_dataset, 7, tmp_path / "a", TrainConfig(epochs=2))
    b = fit_seed("late_fusion", toy_dataset, 7, tmp_path / "b", TrainConfig(epochs=2))
    c = fit_seed("late_fusion", toy_dataset, 8, tmp_path / "c", TrainConfig(epochs=2))
    assert a.metrics["test"] == b.metrics["test"]
    assert a.metrics["test"] != c.metrics["test"]


def test_finished_run_is_reused_and_config_clash_refused(toy_dataset, tmp_path):
    fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=1))
    mtime = (tmp_path / "model.pt").stat().st_mtime_ns
    fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=1))
    assert (tmp_path / "model.pt").stat().st_mtime_ns == mtime
    with pytest.raises(RunError, match="another config"):
        fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=3))


def test_selection_uses_validation_only(toy_dataset, tmp_path):
    """The chosen epoch is the one with the lowest validation MAE in the logs."""
    fit_seed("late_fusion", toy_dataset, 3, tmp_path, TrainConfig(epochs=5, patience=10))
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("val/mae")]
    maes = [float(r["val/mae"]) for r in rows]
    best_epoch = int(np.argmin(maes))
    ck = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
    assert ck["epoch"] == best_epoch
    model, _ = load_run_model(tmp_path)
    r = predict(model, toy_dataset.splits["valid"])
    assert np.mean(np.abs(r["pred"] - r["y"])) == pytest.approx(min(maes), abs=1e-5)


def test_resume_after_kill(toy_dataset, tmp_path):
    """A process killed during epoch 2 leaves last.ckpt; the rerun resumes from it."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(tmp_path.parent)!r})
        from tests_conftest_copy import make_ds
        from msakit.models.late_fusion import LateFusion
        from msakit.train.engine import TrainConfig, fit_seed
        def boom(self, epoch, engine):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        LateFusion.on_train_epoch_start = boom
        fit_seed("late_fusion", make_ds(), 5, {str(tmp_path / 'run')!r}, TrainConfig(epochs=4, patience=10))
        """
    )
    helper = tmp_path.parent / "tests_conftest_copy.py"
    helper.write_text(
        "from conftest import make_split\nfrom msakit.data.dataset import MSADataset\n"
        "def make_ds():\n    return MSADataset('toy', {'train': make_split(96, 0), "
        "'valid': make_split(32, 1), 'test': make_split(32, 2)})\n"
    )
    import pathlib

    env_path = str(pathlib.Path(__file__).parent)
    p = subprocess.run([sys.executable, "-c", script], env={**__import__("os").environ,
                       "PYTHONPATH": env_path}, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "ckpt" / "last.ckpt").exists() and not (run / "metrics.json").exists()

    seen = []
    orig = LateFusion.on_train_epoch_start
    LateFusion.on_train_epoch_start = lambda self, epoch, engine: seen.append(epoch)
    try:
        res = fit_seed("late_fusion", toy_dataset, 5, run, TrainConfig(epochs=4, patience=10))
    finally:
        LateFusion.on_train_epoch_start = orig
    assert seen == [2, 3]  # resumed, not restarted
    assert (run / "metrics.json").exists() and res.metrics["test"]["mae"] > 0


def test_create_model_and_config_errors():
    m = msakit.create_model("late_fusion", {"text": 8, "audio": 3}, d=16, lr="0.01")
    assert m.config.d == 16 and m.config.lr == 0.01
    with pytest.raises(ValueError, match="no config field"):
        msakit.create_model("late_fusion", {"text": 8}, nope=1)
    with pytest.raises(ValueError, match="expected"):
        msakit.create_model("late_fusion", {"text": 8}, d="abc")
    with pytest.raises(KeyError, match="unknown model"):
        msakit.create_model("nope", {"text": 8})


def test_lr_schedule_warms_up_decays_and_resumes(toy_dataset, tmp_path):
    """Warm-up then cosine decay, stepped per optimiser step, saved in the checkpoint."""
    from msakit.train.engine import lr_factor

    assert lr_factor(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.0, "linear") == pytest.approx(0.01)
    assert lr_factor(50, 100, 0.0, "constant") == 1.0
    fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=3, patience=9),
             {"lr_schedule": "cosine", "warmup_frac": "0.2"})
    ck = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    sched = ck["lr_schedulers"][0]
    steps = 3 * 3  # 96 samples, batch 32, 3 epochs
    assert sched["last_epoch"] == steps
    assert sched["_last_lr"][0] == pytest.approx(1e-3 * lr_factor(steps, steps, 0.2, "cosine"))


def test_bf16_mixed_precision_trains_selects_in_fp32_and_is_part_of_the_config(toy_dataset,
                                                                               tmp_path):
    """``precision="bf16-mixed"`` trains under autocast (with norm clipping and the fused
    optimiser), selects on fp32 validation scores (the best logged val/mae is the selected
    weights' fp32 validation MAE) and is part of the run's config."""
    from msakit.errors import ConfigError

    sets = {"grad_clip": "1.0"}
    bf = fit_seed("late_fusion", toy_dataset, 3, tmp_path / "bf",
                  TrainConfig(epochs=4, patience=10, precision="bf16-mixed"), sets)
    fp = fit_seed("late_fusion", toy_dataset, 3, tmp_path / "fp",
                  TrainConfig(epochs=4, patience=10), sets)
    assert bf.config["train"]["precision"] == "bf16-mixed" and fp.config["train"]["precision"] == "32"
    assert bf.metrics["test"]["mae"] != fp.metrics["test"]["mae"]  # bf16 really ran
    assert bf.metrics["test"]["mae"] == pytest.approx(fp.metrics["test"]["mae"], abs=0.05)
    import csv

    maes = [float(r["val/mae"]) for r in csv.DictReader(open(tmp_path / "bf" / "logs" / "metrics.csv"))
            if r.get("val/mae")]
    assert bf.metrics["valid"]["mae"] == pytest.approx(min(maes), abs=1e-6)
    with pytest.raises(RunError, match="train.precision: 'bf16-mixed' -> '32'"):
        fit_seed("late_fusion", toy_dataset, 3, tmp_path / "bf", TrainConfig(epochs=4, patience=10),
                 sets)
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("cuda,mps,expected", [
    (True, False, {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "auto": "cuda", "mps": "cpu"}),
    (False, True, {"cpu": "cpu", "gpu": "mps", "cuda": "cpu", "auto": "mps", "mps": "mps"}),
    (False, False, {"cpu": "cpu", "gpu": "cpu", "cuda": "cpu", "auto": "cpu", "mps": "cpu"}),
])
def test_evaluation_device_is_the_one_lightning_trains_on(monkeypatch, cuda, mps, expected):
    """Evaluation and the bf16 autocast follow Lightning's choice for every ``--accelerator``:
    "auto" on a CUDA machine trains on the GPU, so it must not evaluate on the CPU (it did)."""
    from msakit.train.engine import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert {a: _device(TrainConfig(accelerator=a)) for a in expected} == expected


def test_a_finished_fit_keeps_nothing_alive(toy_dataset, tmp_path):
    """After ``fit_seed`` returns, no Lightning module of it (nor the model, optimiser and data
    it holds) is left for a later garbage collection: a process that fits many seeds or methods
    (a domain run on MOSEI: ERM, DANN and MIDG, 3 seeds each) must not grow by a dataset per
    fit. Automatic collection is off during the fit so the check does not depend on its timing."""
    import gc

    from msakit.train.engine import LitMSA

    gc.collect()
    gc.disable()
    try:
        fit_seed("late_fusion", toy_dataset, 1, tmp_path / "run", TrainConfig(epochs=1))
        left = sum(type(o) is LitMSA for o in gc.get_objects())
    finally:
        gc.enable()
    assert left == 0
