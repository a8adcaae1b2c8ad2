"""``msakit.train``: several seeds of one model on one dataset, summarised as mean and std."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from msakit.data.dataset import MSADataset
from msakit.data.registry import load_dataset
from msakit.train.engine import TrainConfig, fit_seed, write_json

DEFAULT_SEEDS = (1111, 1112, 1113)


def summarize(per_seed: list[dict[str, dict[str, float]]]) -> dict:
    """``{split: {metric: {"mean", "std", "n", "values"}}}``; ``oracle/<split>`` entries go under
    ``summary["oracle"][split]``. std is the sample std (ddof=1; 0 for one seed)."""
    out: dict[str, Any] = {}
    keys = [k for k in per_seed[0] if not k.startswith("_")]
    for key in keys:
        metrics = per_seed[0][key]
        block = {}
        for m in metrics:
            vals = np.array([r[key][m] for r in per_seed], dtype=np.float64)
            block[m] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n": len(vals),
                "values": vals.tolist(),
            }
        if key.startswith("oracle/"):
            out.setdefault("oracle", {})[key.split("/", 1)[1]] = block
        else:
            out[key] = block
    return out


def train(
    model: str,
    dataset: str | os.PathLike | MSADataset,
    out: str | os.PathLike,
    seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    corrupt: str | None = None,
    overrides: dict | None = None,
    train_config: TrainConfig | None = None,
    progress: bool = False,
) -> dict:
    """Train ``model`` on ``dataset`` once per seed into ``out/seed_<s>/`` and write
    ``out/summary.json`` (mean and std over seeds, per split)."""
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    tcfg = train_config or TrainConfig()
    if epochs is not None:
        tcfg.epochs = epochs
    if corrupt is not None:
        tcfg.corrupt = corrupt
    tcfg.progress = progress
    out = Path(out)
    results = [
        fit_seed(model, ds, s, out / f"seed_{s}", tcfg, overrides).metrics for s in seeds
    ]
    summary = summarize(results)
    summary["_meta"] = {
        "model": model,
        "dataset": ds.name,
        "seeds": list(seeds),
        "corrupt": tcfg.corrupt,
        "protocol": "clean (no corruption at evaluation)",
        "selection": f"best validation {tcfg.select}",
    }
    write_json(out / "summary.json", summary)
    return summary
