"""Finding and re-evaluating saved run folders."""

from __future__ import annotations

import os
from pathlib import Path

from msakit.corrupt import parse_domain, parse_protocol, split_domain
from msakit.data.dataset import SPLITS
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
    """Re-evaluate every seed of a run on its own (or another) dataset; mean and std per split.

    A run trained with ``domain`` is evaluated on the same domain view (``test``: the target
    domains, ``test_source``: the sources). A ``domain:A->C`` part of ``protocol`` on a run
    trained without one keeps the target domains' rows of every split."""
    per_seed, cache = [], {}
    prot = parse_protocol(protocol)
    dom_prot, _ = split_domain(prot)
    for d in seed_dirs(run):
        name = dataset or read_json(d / "config.json").get("dataset")
        if name not in cache:
            cache[name] = load_dataset(name)
        model, cfg = load_run_model(d, cache[name])
        if model.input_dims != cache[name].dims:
            raise ConfigError(f"--dataset {name}: dims {cache[name].dims}, {d} was trained on "
                              f"{model.input_dims}")
        ds, p = cache[name], prot
        trained_on = (cfg.get("train") or {}).get("domain")
        if trained_on:
            if dom_prot is not None:
                raise ConfigError(f"--corrupt {protocol!r}: {d} was trained with domain "
                                  f"{trained_on!r} and is evaluated on that split; drop the domain part")
            ds = parse_domain(trained_on).view(ds)
        elif dom_prot is not None:
            dom_prot.bind(ds)
        splits = (*SPLITS, *(s for s in ds.splits if s not in SPLITS))
        per_seed.append(evaluate_model(model, ds, splits, protocol=p, seed=seed))
    return summarize(per_seed)
