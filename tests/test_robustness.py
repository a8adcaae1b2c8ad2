"""Training-time corruption, robustness sweeps, the matrix (with resume) and `msakit results`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from msakit.cli import app
from msakit.corrupt import parse_protocol
from msakit.data.batch import Batch, SplitData, collate
from msakit.data.dataset import MSADataset
from msakit.data.registry import DATASETS, DatasetEntry, register_dataset
from msakit.evaluate.matrix import run_matrix
from msakit.evaluate.robustness import parse_levels, resolve_runs, sweep
from msakit.evaluate.tables import collect_results, format_results
from msakit.models.base import MODELS, ModelConfig, ModelSpec, MSAModel, Output
from msakit.train.engine import TrainConfig, evaluate_model, fit_seed

NAME = "robust-tiny"
SMALL = ["d=16", "heads=2", "head_hidden=16"]
runner = CliRunner()


def make_split(n: int, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    x, lens = {}, {}
    for m, L, D in (("text", 10, 8), ("audio", 12, 3), ("vision", 9, 4)):
        lens[m] = rng.integers(1, L + 1, n)
        a = rng.normal(size=(n, L, D)).astype("f4")
        a[np.arange(L)[None, :] >= lens[m][:, None]] = 0
        x[m] = a
    sig = np.array([x["text"][i, : lens["text"][i], 0].mean() for i in range(n)])
    return SplitData(x, lens, np.clip(3 * np.tanh(2 * sig), -3, 3), [f"s{seed}_{i}" for i in range(n)])


def oracle(batch: Batch) -> np.ndarray:
    """The label law applied to the observed text steps (0 when none is observed)."""
    obs = batch.observed("text").float()
    mean = (batch.x["text"][..., 0] * obs).sum(1) / obs.sum(1).clamp_min(1)
    return (3 * torch.tanh(2 * mean)).numpy()


def tiny() -> MSADataset:
    splits = {"train": make_split(96, 0), "valid": make_split(32, 1), "test": make_split(48, 2)}
    return MSADataset(NAME, splits, oracle=oracle)


if NAME not in DATASETS:
    register_dataset(DatasetEntry(NAME, lambda: tiny(), "robustness tests", synthetic=True))


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory):
    """late_fusion trained clean and with frames:random, 2 seeds, swept under frames/subset."""
    out = tmp_path_factory.mktemp("matrix")
    run_matrix(
        NAME, ["late_fusion"], out, protocols=["frames", "subset"],
        train_corrupt=["none", "frames:random"], seeds=[1, 2], epochs=2,
        levels={"frames": "0:0.6:0.3", "subset": "l,av,lav"}, overrides=SMALL, log=lambda m: None,
    )
    return out


def runs_of(d):
    return [d / "runs" / "late_fusion__clean", d / "runs" / "late_fusion__frames-random"]


# --------------------------------------------------------------------------- training-time
def test_train_cli_records_corruption(tmp_path):
    args = ["train", "--model", "late_fusion", "--dataset", NAME, "--out", str(tmp_path),
            "--seeds", "5", "--epochs", "1", "--corrupt", "frames:random"]
    for s in SMALL:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "seed_5" / "config.json").read_text())
    assert cfg["train"]["corrupt"] == "frames:random"
    assert json.loads((tmp_path / "summary.json").read_text())["_meta"]["corrupt"] == "frames:random"


@dataclass
class ProbeConfig(ModelConfig):
    batch_size: int = 32


SEEN: list[tuple[int, list[str], torch.Tensor, dict]] = []


class Probe(MSAModel):
    """Records what the training batches look like (test helper; registered only inside the
    test that uses it, so tests that enumerate the registry never see it)."""

    def __init__(self, dims, config, n_classes=0):
        super().__init__(dims, config, n_classes)
        self.lin = torch.nn.Linear(dims["text"], 1)
        self.epoch = -1

    def on_train_epoch_start(self, epoch, engine):
        self.epoch = epoch

    def forward(self, batch):
        if self.training:
            SEEN.append((self.epoch, list(batch.ids), batch.mask["audio"].clone(),
                         batch.corruption and batch.corruption.missing_rate))
        obs = batch.observed("text").float().unsqueeze(-1)
        pooled = (batch.x["text"] * obs).sum(1) / obs.sum(1).clamp_min(1)
        return Output(self.lin(pooled).squeeze(-1))


@pytest.fixture
def probe_model():
    with MODELS.temporarily("robust_probe", ModelSpec("robust_probe", Probe, ProbeConfig)):
        yield


def test_engine_redraws_training_corruption_each_epoch(tmp_path, probe_model):
    ds = tiny()
    SEEN.clear()
    fit_seed("robust_probe", ds, 3, tmp_path / "a", TrainConfig(epochs=3, corrupt="frames:random", patience=9))
    assert {e for e, *_ in SEEN} == {0, 1, 2}
    rates = torch.cat([r["audio"] for *_, r in SEEN])
    assert abs(rates.mean().item() - 0.25) < 0.08  # E[r] with half reset to 0
    assert (rates == 0).float().mean() > 0.3
    masks = {}  # the same sample gets different masks in different epochs
    for e, ids, mk, _ in SEEN:
        for i, sid in enumerate(ids):
            masks.setdefault(sid, {})[e] = mk[i]
    sid = next(iter(masks))
    assert any(not torch.equal(masks[s][0], masks[s][1]) for s in list(masks)[:20]), sid
    SEEN.clear()
    fit_seed("robust_probe", ds, 3, tmp_path / "b", TrainConfig(epochs=1))
    assert all(r is None for *_, r in SEEN)  # no corruption unless asked


# --------------------------------------------------------------------------- levels and labels
@pytest.mark.parametrize(
    "spec, protocol, expect",
    [
        ("0,0.1,0.2", "frames", ["0", "0.1", "0.2"]),
        ("0:0.9:0.1", "frames", [f"{i / 10:g}" for i in range(10)]),
        ("0,0.1,...,0.5", "frames", ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]),
        ("l,a,v,la,lv,av,lav", "subset", ["l", "a", "v", "la", "lv", "av", "lav"]),
        (None, "modality", ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]),
        ("0.10, 0.5", "noise", ["0.1", "0.5"]),
    ],
)
def test_parse_levels(spec, protocol, expect):
    assert parse_levels(spec, protocol) == expect


@pytest.mark.parametrize("spec, protocol, words", [
    ("0,x", "frames", "not a number"), ("0:1:-1", "frames", "step"), ("1.5", "frames", "[0, 1]"),
    ("q", "subset", "modality subset"), ("...,1", "frames", "'...'"), ("0.8", "modality", None),
])
def test_parse_levels_errors(spec, protocol, words):
    if words is None:
        assert parse_levels(spec, protocol) == ["0.8"]
        return
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(")):
        parse_levels(spec, protocol)


def test_labels(matrix_dir):
    clean, rnd = runs_of(matrix_dir)
    assert [g.label for g in resolve_runs([clean, rnd])] == ["late_fusion__clean", "late_fusion__frames-random"]
    assert [g.label for g in resolve_runs([clean])] == ["late_fusion"]
    assert [g.label for g in resolve_runs([("A", clean), rnd])] == ["A", "late_fusion"]
    with pytest.raises(ValueError, match="twice"):
        resolve_runs([clean, clean])


# --------------------------------------------------------------------------- sweeps
def test_robustness_cli_outputs_and_byte_identical(matrix_dir, tmp_path):
    clean, rnd = runs_of(matrix_dir)
    csvs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        res = runner.invoke(app, ["robustness", "--run", str(clean), "--run", str(rnd), "--protocol",
                                  "frames", "--levels", "0,0.2,...,0.6", "--out", str(out)])
        assert res.exit_code == 0, res.output
        csvs.append((out / "robustness.csv").read_bytes())
    assert csvs[0] == csvs[1]
    df = pd.read_csv(out / "robustness.csv", dtype={"level": str})
    assert list(df.columns) == ["model", "protocol", "level", "metric", "mean", "std", "n_seeds"]
    assert list(dict.fromkeys(df.model)) == ["late_fusion__clean", "late_fusion__frames-random", "oracle"]
    assert list(dict.fromkeys(df.level)) == ["0", "0.2", "0.4", "0.6"]
    assert (df[df.model != "oracle"].n_seeds == 2).all() and (df[df.model == "oracle"].n_seeds == 1).all()
    assert len(df) == 3 * 4 * 9
    md = (out / "robustness.md").read_text()
    assert "| model | 0 | 0.2 | 0.4 | 0.6 | mean |" in md and "| oracle |" in md
    assert "$\\pm$" in (out / "robustness.tex").read_text()
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "robustness.json").read_text())
    assert meta["protocol_seed"] == 0 and meta["runs"][0]["seeds"] == ["1", "2"]
    # the oracle gets worse as frames go missing, and the headline is the mean over levels
    o = df[(df.model == "oracle") & (df.metric == "mae")]["mean"].to_numpy()
    assert o[0] < o[-1]
    seeds = pd.read_csv(out / "robustness_seeds.csv", dtype={"level": str, "seed": str})
    s = seeds[(seeds.model == "late_fusion__clean") & (seeds.metric == "mae")]
    per_seed_mean = s.groupby("seed").value.mean()
    head = [h for h in meta["headline"] if h["model"] == "late_fusion__clean" and h["metric"] == "mae"][0]
    assert head["mean"] == pytest.approx(per_seed_mean.mean())
    assert head["std"] == pytest.approx(per_seed_mean.std(ddof=1))


def test_level0_matches_clean_evaluation(matrix_dir):
    ds = tiny()
    clean = runs_of(matrix_dir)[0]
    res = sweep([clean], "frames", ["0"], dataset=ds)
    for d in sorted(clean.glob("seed_*")):
        saved = json.loads((d / "metrics.json").read_text())["test"]
        row = res.per_seed[(res.per_seed.seed == d.name.split("_")[1]) & (res.per_seed.metric == "mae")]
        assert row.value.iloc[0] == pytest.approx(saved["mae"], abs=1e-6)
    full = res.per_seed[(res.per_seed.model == "oracle") & (res.per_seed.metric == "mae")].value.iloc[0]
    from msakit.metrics import regression_metrics

    sd = ds.splits["test"]
    b = collate(sd, np.arange(len(sd)))
    assert full == pytest.approx(regression_metrics(oracle(b), sd.y)["mae"])


def test_subset_sweep_and_oracle_sees_same_masks(matrix_dir):
    ds = tiny()
    clean = runs_of(matrix_dir)[0]
    res = sweep([clean], "subset", "l,av,lav", dataset=ds, batch_size=7)
    assert list(dict.fromkeys(res.summary.level)) == ["l", "av", "lav"]
    mae = res.per_seed[(res.per_seed.model == "oracle") & (res.per_seed.metric == "mae")]
    sd = ds.splits["test"]
    b = collate(sd, np.arange(len(sd)))
    from msakit.metrics import regression_metrics

    for lv, v in zip(mae.level, mae.value, strict=True):  # batch size does not change anything
        cb = parse_protocol(f"subset:{lv}")(b, seed=0)
        assert v == pytest.approx(regression_metrics(oracle(cb), sd.y)["mae"], abs=1e-6)
    # with every modality observed, the sweep reproduces the saved clean evaluation
    lav = res.per_seed[(res.per_seed.level == "lav") & (res.per_seed.metric == "mae") & (res.per_seed.model != "oracle")]
    saved = [json.loads((d / "metrics.json").read_text())["test"]["mae"] for d in sorted(clean.glob("seed_*"))]
    assert lav.value.to_numpy() == pytest.approx(saved, abs=1e-6)
    ev = evaluate_model(__import__("msakit.train.engine", fromlist=["x"]).load_run_model(clean / "seed_1")[0], ds,
                        splits=("test",), protocol=parse_protocol("subset:av"))
    av = res.per_seed[(res.per_seed.level == "av") & (res.per_seed.metric == "mae") & (res.per_seed.seed == "1")]
    assert av.value.iloc[0] == pytest.approx(ev["test"]["mae"], abs=1e-6)


def test_robustness_errors(matrix_dir, tmp_path):
    clean = runs_of(matrix_dir)[0]
    with pytest.raises(FileNotFoundError, match="no finished run"):
        sweep([tmp_path], "frames", "0")
    with pytest.raises(KeyError, match="unknown protocol"):
        sweep([clean], "blur", "0.1", dataset=tiny())
    with pytest.raises(ValueError, match="split"):
        sweep([clean], "frames", "0", dataset=tiny(), split="dev")


# --------------------------------------------------------------------------- matrix
def test_matrix_outputs(matrix_dir):
    md = (matrix_dir / "matrix.md").read_text()
    assert "late_fusion [clean]" in md and "late_fusion [frames:random]" in md and "oracle" in md
    assert "![robust-tiny frames](frames/robustness.png)" in md
    for p in ("frames", "subset"):
        assert (matrix_dir / p / "robustness.png").exists()
    df = pd.read_csv(matrix_dir / "matrix.csv", dtype={"level": str})
    assert set(df.protocol) == {"frames", "subset"}
    assert set(df[df.protocol == "subset"].level) == {"l", "av", "lav"}
    cfg = json.loads((matrix_dir / "runs" / "late_fusion__frames-random" / "seed_1" / "config.json").read_text())
    assert cfg["train"]["corrupt"] == "frames:random" and cfg["overrides"]["d"] == 16


def test_matrix_resumes_only_missing_work(matrix_dir, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(matrix_dir, out)
    files = sorted(p for p in (out / "runs").rglob("*") if p.name in ("metrics.json", "model.pt"))
    victim = out / "runs" / "late_fusion__clean" / "seed_2" / "metrics.json"
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in files if p != victim}
    logs: list[str] = []
    run_matrix(
        NAME, ["late_fusion"], out, protocols=["frames", "subset"],
        train_corrupt=["none", "frames:random"], seeds=[1, 2], epochs=2,
        levels={"frames": "0:0.6:0.3", "subset": "l,av,lav"}, overrides=SMALL, log=logs.append,
    )
    assert victim.exists()
    changed = [p for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert all(p.parent == victim.parent for p in changed), changed
    assert json.loads(victim.read_text())["test"]["mae"] > 0
    # a rerun with nothing missing retrains nothing and re-evaluates nothing
    again = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    sweep_t = (out / "frames" / "robustness.csv").stat().st_mtime_ns
    logs.clear()
    run_matrix(
        NAME, ["late_fusion"], out, protocols=["frames", "subset"],
        train_corrupt=["none", "frames:random"], seeds=[1, 2], epochs=2,
        levels={"frames": "0:0.6:0.3", "subset": "l,av,lav"}, overrides=SMALL, log=logs.append,
    )
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")
            if p.name != "summary.json"} == {p: t for p, t in again.items() if p.name != "summary.json"}
    assert (out / "frames" / "robustness.csv").stat().st_mtime_ns == sweep_t
    assert any("up to date" in m for m in logs)


def test_matrix_cli(tmp_path):
    args = ["matrix", "--dataset", NAME, "--models", "late_fusion", "--out", str(tmp_path),
            "--protocols", "modality", "--seeds", "7", "--epochs", "1", "--levels", "modality=0,0.3"]
    for s in SMALL:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "modality" / "robustness.csv", dtype={"level": str})
    assert list(dict.fromkeys(df.level)) == ["0", "0.3"] and set(df.model) == {"late_fusion", "oracle"}
    assert "up to date" not in res.output


# --------------------------------------------------------------------------- results
def test_results_aggregates_run_folders(matrix_dir):
    df = collect_results([matrix_dir / "runs"], group_by=["model", "corrupt"])
    assert set(df.corrupt) == {"none", "frames:random", "-"}
    row = df[df.corrupt == "frames:random"].iloc[0]
    vals = [json.loads(p.read_text())["test"]["mae"]
            for p in sorted((matrix_dir / "runs" / "late_fusion__frames-random").glob("seed_*/metrics.json"))]
    assert row.n_seeds == 2 and row.mae_mean == pytest.approx(np.mean(vals))
    assert row.mae_std == pytest.approx(np.std(vals, ddof=1))
    pooled = collect_results([matrix_dir], group_by=["model"])
    assert pooled[pooled.model == "late_fusion"].n_seeds.iloc[0] == 4
    assert "oracle" in set(pooled.model)
    text = format_results(df, "csv", ["mae", "acc2_non0"])
    assert text.splitlines()[0] == "run,model,dataset,corrupt,n_seeds,mae_mean,mae_std,acc2_non0_mean,acc2_non0_std"
    pooled_cols = collect_results([matrix_dir], group_by=["model"]).columns
    assert "run" not in pooled_cols and "corrupt" not in pooled_cols and "dataset" in pooled_cols
    assert "$\\pm$" in format_results(df, "latex") and "frames:random" in format_results(df, "md")


def test_results_cli(matrix_dir, tmp_path):
    res = runner.invoke(app, ["results", str(matrix_dir / "runs"), "--format", "md", "--metrics", "mae,corr"])
    assert res.exit_code == 0, res.output
    assert "| run | model | dataset | corrupt | n_seeds | mae | corr |" in res.output
    assert "late_fusion__clean" in res.output
    res = runner.invoke(app, ["results", str(matrix_dir), "--group-by", "speed"])
    assert isinstance(res.exception, ValueError) and "--group-by" in str(res.exception)
    res = runner.invoke(app, ["results", str(tmp_path)])
    assert isinstance(res.exception, FileNotFoundError)
