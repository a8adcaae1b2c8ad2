"""The model x training-corruption x protocol matrix (``msakit matrix``).

:func:`run_matrix` trains every model with every training corruption (one run folder per
pair, one sub-folder per seed) and evaluates them all under every protocol::

    OUT/runs/<model>__<tag>/seed_<s>/    msakit train runs (tag: clean, frames-random, ...)
    OUT/<protocol>/robustness.*          one table set and one figure per protocol
    OUT/matrix.csv                       every protocol's long-form summary, concatenated
    OUT/matrix.md                        headline (mean over levels) per protocol + the tables
    OUT/matrix.json                      the plan and where everything is

Resuming: a finished seed (``metrics.json`` + ``model.pt`` with the same config) is reused,
an interrupted one resumes from its ``last.ckpt`` (both by ``fit_seed``); a protocol whose
runs, levels and protocol seed are unchanged (weights fingerprint in ``robustness.json``) is
not evaluated again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from msakit.data.dataset import MSADataset
from msakit.data.registry import load_dataset
from msakit.errors import ConfigError
from msakit.evaluate.robustness import (
    PLOT_METRICS,
    SUMMARY_COLUMNS,
    check_eval_options,
    fingerprint,
    metric_kind,
    parse_levels,
    resolve_runs,
    sweep,
    write_sweep,
)
from msakit.evaluate.tables import markdown, pm
from msakit.fileio import check_out_dir, read_json, write_json, write_text
from msakit.models.base import parse_sets
from msakit.train.api import DEFAULT_SEEDS, train
from msakit.train.engine import TrainConfig

CLEAN = ("none", "clean", "")


def corrupt_tag(spec: str | None) -> str:
    """Folder-safe tag of a training corruption: ``frames:random`` -> ``frames-random``;
    ``none`` -> ``clean``; ``default`` (the model's own, ``default_corrupt``) -> ``default``."""
    if spec is None or spec in CLEAN:
        return "clean"
    return spec.replace(":", "-").replace("+", "_").replace("/", "-")


def corrupt_label(spec: str | None) -> str:
    return "clean" if spec is None or spec in CLEAN else spec


def _cached(out: Path, fp: str, levels: list[str], protocol_seed: int, split: str) -> dict | None:
    meta_p, csv_p = out / "robustness.json", out / "robustness.csv"
    if not (meta_p.exists() and csv_p.exists() and (out / "robustness.png").exists()):
        return None
    meta = read_json(meta_p)
    same = (meta.get("fingerprint") == fp and meta.get("levels") == levels
            and meta.get("protocol_seed") == protocol_seed and meta.get("split") == split)
    return meta if same else None


def run_matrix(
    dataset: str | os.PathLike | MSADataset,
    models: Sequence[str],
    out: str | os.PathLike,
    protocols: Sequence[str] = ("frames", "modality", "subset"),
    train_corrupt: Sequence[str | None] = ("none",),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    levels: dict[str, str | Sequence[str]] | None = None,
    overrides: Sequence[str] | dict | None = None,
    protocol_seed: int = 0,
    split: str = "test",
    accelerator: str = "cpu",
    device: str = "cpu",
    batch_size: int = 128,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or reuse) every model x training corruption, sweep every protocol; returns the
    plan with ``summary`` (long form over protocols) and ``headline`` data frames."""
    out = Path(out)
    models = list(models)
    if not models or not protocols or not seeds:
        raise ConfigError("matrix: --models, --protocols and --seeds must each name at least one")
    check_eval_options(batch_size, device)
    check_out_dir(out)
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    if split not in ds.splits:
        raise ConfigError(f"--split {split!r}: dataset {ds.name!r} has {list(ds.splits)}")
    TrainConfig(accelerator=accelerator, epochs=epochs)  # fail before training
    lv = {p: parse_levels((levels or {}).get(p), p, ds.modalities) for p in protocols}
    per_model = parse_sets(overrides, models)
    corrupts = [corrupt_label(c) for c in train_corrupt]
    tags = [corrupt_tag(c) for c in corrupts]
    if len(set(tags)) < len(tags):
        raise ConfigError(f"--train-corrupt {list(train_corrupt)}: duplicates")

    runs: list[tuple[str, Path]] = []
    for model in models:
        for spec, tag in zip(corrupts, tags, strict=True):
            label = model if len(corrupts) == 1 else f"{model} [{spec}]"
            run_dir = out / "runs" / f"{model}__{tag}"
            log(f"train {label} on {ds.name}: seeds {list(seeds)} -> {run_dir}")
            # "none" disables a model's default_corrupt; None (for "default") keeps it
            arg = {"clean": "none", "default": None}.get(spec, spec)
            train(model, ds, run_dir, seeds=list(seeds), epochs=epochs, corrupt=arg,
                  overrides=per_model[model], train_config=TrainConfig(accelerator=accelerator))
            runs.append((label, run_dir))

    groups = resolve_runs(runs)
    fp = fingerprint(groups)
    summaries, headlines, plan_protocols = [], [], {}
    for p in protocols:
        pdir = out / p.split(":")[0]
        meta = _cached(pdir, fp, lv[p], protocol_seed, split)
        if meta is None:
            log(f"evaluate {len(groups)} runs under {p} at {len(lv[p])} levels -> {pdir}")
            res = sweep(groups, p, lv[p], protocol_seed=protocol_seed, split=split, dataset=ds,
                        batch_size=batch_size, device=device)
            write_sweep(res, pdir, extra_meta={"fingerprint": fp})
            summary, headline = res.summary, res.headline
        else:
            log(f"{p}: up to date in {pdir}")
            summary = pd.read_csv(pdir / "robustness.csv", dtype={"level": str, "model": str})
            headline = pd.DataFrame(meta["headline"])
        summaries.append(summary[SUMMARY_COLUMNS])
        headlines.append(headline)
        plan_protocols[p] = {"dir": str(pdir), "levels": lv[p], "figure": str(pdir / "robustness.png")}

    summary = pd.concat(summaries, ignore_index=True)
    headline = pd.concat(headlines, ignore_index=True)
    write_text(out / "matrix.csv", summary.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    write_text(out / "matrix.md", matrix_markdown(summary, headline, metric_kind(ds), ds.name))
    plan = {
        "dataset": ds.name, "models": models, "train_corrupt": corrupts,
        "seeds": list(seeds), "epochs": epochs, "protocol_seed": protocol_seed, "split": split,
        "runs": {label: str(path) for label, path in runs}, "protocols": plan_protocols,
        "fingerprint": fp,
    }
    write_json(out / "matrix.json", plan)
    return {**plan, "summary": summary, "headline": headline, "out": out}


def matrix_markdown(summary: pd.DataFrame, headline: pd.DataFrame, label_scale: str, dataset: str,
                    figures: dict[str, str] | None = None) -> str:
    """Headline (mean over levels, per protocol) and the per-level table of the first plot
    metric for each protocol, with its figure linked (``figures[protocol]``, default the
    sweep's own ``<protocol>/robustness.png`` beside ``matrix.md``)."""
    metrics = PLOT_METRICS[label_scale]
    protocols = list(dict.fromkeys(summary.protocol))
    models = list(dict.fromkeys(summary.model))
    parts = [f"### {dataset}: mean over levels (mean ± std over seeds)\n\n"]
    header = ["model"] + [f"{p} {m}" for m in metrics for p in protocols]
    rows = []
    for model in models:
        cells = [model]
        for m in metrics:
            for p in protocols:
                h = headline[(headline.model == model) & (headline.protocol == p) & (headline.metric == m)]
                cells.append(pm(h["mean"].iloc[0], h["std"].iloc[0], n=h["n_seeds"].iloc[0]) if len(h) else "-")
        rows.append(cells)
    parts.append(markdown(header, rows))
    for p in protocols:
        s = summary[(summary.protocol == p) & (summary.metric == metrics[0])]
        levels = list(dict.fromkeys(s.level))
        parts.append(f"\n#### {dataset}, {p}: {metrics[0]} per level\n\n")
        rows = []
        for model in models:
            sm = s[s.model == model].set_index("level")
            h = headline[(headline.model == model) & (headline.protocol == p) & (headline.metric == metrics[0])]
            rows.append([model] + [pm(sm.at[lv, "mean"], sm.at[lv, "std"], n=sm.at[lv, "n_seeds"])
                                   if lv in sm.index else "-" for lv in levels]
                        + [pm(h["mean"].iloc[0], h["std"].iloc[0], n=h["n_seeds"].iloc[0]) if len(h) else "-"])
        parts.append(markdown(["model", *levels, "mean"], rows))
        fig = (figures or {}).get(p, f"{p}/robustness.png")
        parts.append(f"\n![{dataset} {p}]({fig})\n")
    return "".join(parts)
