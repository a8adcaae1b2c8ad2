"""Finding and re-evaluating saved run folders."""

from __future__ import annotations

import os
from pathlib import Path

from msakit.corrupt import parse_protocol
from msakit.data.registry import load_dataset
from msakit.errors import ConfigError, MissingDataError
from msakit.fileio import read_json
from msakit.train.api import summarize
from msakit.train.engine import evaluate_model, load_run_model


def seed_dirs(run: str | os.PathLike) -> list[Path]:
    """The finished seed folders of a run (model.pt and metrics.json, the set summary.json
    averages): ``run`` itself when it is one, else its ``seed_*``."""
    run = Path(run)

    def done(d: Path) -> bool:
        return (d / "model.pt").exists() and (d / "metrics.json").exists()

    if done(run):
        return [run]
    dirs = sorted(d for d in run.glob("seed_*") if done(d))
    if not dirs:
        raise MissingDataError(
            f"--run {run}: no finished run here (expected model.pt and metrics.json, or seed_*/ with them)"
        )
    return dirs


def evaluate_runs(
    run: str | os.PathLike, dataset: str | None = None, protocol: str | None = None, seed: int = 0
) -> dict:
    """Re-evaluate every seed of a run on its own (or another) dataset; mean and std per split."""
    per_seed, cache = [], {}
    prot = parse_protocol(protocol)
    for d in seed_dirs(run):
        name = dataset or read_json(d / "config.json").get("dataset")
        if name not in cache:
            cache[name] = load_dataset(name)
        model, cfg = load_run_model(d, cache[name])
        if model.input_dims != cache[name].dims:
            raise ConfigError(f"--dataset {name}: dims {cache[name].dims}, {d} was trained on "
                              f"{model.input_dims}")
        per_seed.append(evaluate_model(model, cache[name], protocol=prot, seed=seed))
    return summarize(per_seed)
