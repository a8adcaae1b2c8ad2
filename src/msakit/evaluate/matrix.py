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

from msakit.corrupt import parse_domain
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
    summarise,
    sweep,
    write_sweep,
)
from msakit.evaluate.tables import markdown, pm
from msakit.fileio import check_out_dir, read_json, write_csv, write_json, write_text
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


def is_domain(protocol: str) -> bool:
    return protocol.split(":")[0].strip() == "domain"


def domain_splits(ds: MSADataset, specs: Sequence[str]) -> list[str]:
    """``["domain"]`` -> every leave-one-domain-out split of ``ds`` (``"b,c->a"``, ...);
    ``["domain:a,b->c", ...]`` -> those splits, checked against ``ds.info["domains"]``."""
    names = ds.info.get("domains")
    if ds.splits["train"].domain is None or not names or len(names) < 2:
        raise ConfigError(
            f"--protocols domain: dataset {ds.name!r} has no domain groups (needs SplitData.domain "
            f"and info['domains'] with at least two names); use synthetic-domains or join:A,B")
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if spec == "domain":
            out += [",".join(n for n in names if n != t) + f"->{t}" for t in names]
        else:
            dom = parse_domain(spec)
            dom.bind(ds)
            out.append(dom.level)
    out = list(dict.fromkeys(out))
    for spec in out:
        parse_domain(spec).view(ds)  # every split has rows (one line otherwise)
    return out


def domain_target(ds: MSADataset, spec: str) -> str:
    """``"a,b->c"`` -> ``"c"`` (target names, ``+``-joined when several)."""
    dom = parse_domain(spec).bind(ds)
    names = dom.names or []
    return "+".join(str(names[i]) if i < len(names) else str(i) for i in dom.target)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


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
    precision: str = "32",
) -> dict:
    """Train (or reuse) every model x training corruption, sweep every protocol; returns the
    plan with ``summary`` (long form over protocols) and ``headline`` data frames.

    A ``domain`` protocol (all leave-one-domain-out splits of a multi-domain dataset) or
    ``domain:A,B->C`` (that split) trains every model once per split, on the sources only
    (``OUT/runs/<model>__<tag>__to-<target>``), reports target (``domain``) and in-domain
    (``domain_source``) metrics with the target-domain oracle (``OUT/domain/domains.csv``,
    ``.md``), and sweeps the other protocols over each split's target test rows (protocol
    ``"<p> [A,B->C]"``, ``OUT/<p>/to-<target>/``)."""
    out = Path(out)
    models = list(models)
    if not models or not protocols or not seeds:
        raise ConfigError("matrix: --models, --protocols and --seeds must each name at least one")
    check_eval_options(batch_size, device)
    check_out_dir(out)
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    dom_specs = [p for p in protocols if is_domain(p)]
    protocols = [p for p in protocols if not is_domain(p)]
    dsplits = domain_splits(ds, dom_specs) if dom_specs else [None]
    if dom_specs and split not in ("test", "test_source"):
        raise ConfigError(f"--split {split!r}: with --protocols domain expected test (the target "
                          f"domains) or test_source (the sources)")
    if not dom_specs and split not in ds.splits:
        raise ConfigError(f"--split {split!r}: dataset {ds.name!r} has {list(ds.splits)}")
    TrainConfig(accelerator=accelerator, epochs=epochs, precision=precision)  # fail early
    lv = {p: parse_levels((levels or {}).get(p), p, ds.modalities) for p in protocols}
    per_model = parse_sets(overrides, models)
    corrupts = [corrupt_label(c) for c in train_corrupt]
    tags = [corrupt_tag(c) for c in corrupts]
    if len(set(tags)) < len(tags):
        raise ConfigError(f"--train-corrupt {list(train_corrupt)}: duplicates")

    all_runs: list[tuple[str, Path]] = []
    summaries, headlines, plan_protocols = [], [], {}
    dom_records: list[dict] = []
    plan_domains: dict[str, dict] = {}
    figures: dict[str, str | None] = {}
    for dspec in dsplits:
        target = domain_target(ds, dspec) if dspec else None
        suffix = f"__to-{_safe(target)}" if dspec else ""
        runs: list[tuple[str, Path]] = []
        for model in models:
            for spec, tag in zip(corrupts, tags, strict=True):
                label = model if len(corrupts) == 1 else f"{model} [{spec}]"
                run_dir = out / "runs" / f"{model}__{tag}{suffix}"
                where = f" (domain {dspec})" if dspec else ""
                log(f"train {label} on {ds.name}{where}: seeds {list(seeds)} -> {run_dir}")
                # "none" disables a model's default_corrupt; None (for "default") keeps it
                arg = {"clean": "none", "default": None}.get(spec, spec)
                summ = train(model, ds, run_dir, seeds=list(seeds), epochs=epochs, corrupt=arg,
                             overrides=per_model[model], domain=dspec,
                             train_config=TrainConfig(accelerator=accelerator,
                                                      precision=precision))
                runs.append((label, run_dir))
                if dspec:
                    dom_records += _domain_records(label, dspec, summ, with_oracle=not any(
                        r["model"] == "oracle" and r["level"] == dspec for r in dom_records))
        all_runs += runs
        if dspec:
            plan_domains[dspec] = {"target": target, "runs": {lab: str(p) for lab, p in runs}}
        if not protocols:
            continue
        groups = resolve_runs(runs)
        fp = fingerprint(groups)
        for p in protocols:
            name = p.split(":")[0]
            pdir = out / name / f"to-{_safe(target)}" if dspec else out / name
            label = f"{name} [{dspec}]" if dspec else name
            meta = _cached(pdir, fp, lv[p], protocol_seed, split)
            if meta is None:
                log(f"evaluate {len(groups)} runs under {p} at {len(lv[p])} levels -> {pdir}")
                res = sweep(groups, p, lv[p], protocol_seed=protocol_seed, split=split, dataset=ds,
                            batch_size=batch_size, device=device)
                write_sweep(res, pdir, extra_meta={"fingerprint": fp})
                summary, headline = res.summary, res.headline
            else:
                log(f"{label}: up to date in {pdir}")
                summary = pd.read_csv(pdir / "robustness.csv", dtype={"level": str, "model": str})
                headline = pd.DataFrame(meta["headline"])
            summary, headline = summary.copy(), headline.copy()
            summary["protocol"] = label
            headline["protocol"] = label
            summaries.append(summary[SUMMARY_COLUMNS])
            headlines.append(headline)
            figures[label] = str((pdir / "robustness.png").relative_to(out))
            plan_protocols[label] = {"dir": str(pdir), "levels": lv[p],
                                     "figure": str(pdir / "robustness.png")}

    kind = metric_kind(ds)
    if dom_records:
        per_seed = pd.DataFrame(dom_records)
        dsum, dhead = summarise(per_seed)
        summaries.insert(0, dsum[SUMMARY_COLUMNS])
        headlines.insert(0, dhead)
        ddir = out / "domain"
        ddir.mkdir(parents=True, exist_ok=True)
        table = domain_table(dsum, ds)
        write_csv(ddir / "domains.csv", table)
        write_csv(ddir / "domains_seeds.csv", per_seed)
        write_text(ddir / "domains.md", domain_markdown(table, ds))
        figures.update({"domain": None, "domain_source": None})
        plan_protocols["domain"] = {"dir": str(ddir), "splits": plan_domains}

    summary = pd.concat(summaries, ignore_index=True)
    headline = pd.concat(headlines, ignore_index=True)
    write_csv(out / "matrix.csv", summary)
    md = matrix_markdown(summary, headline, kind, ds.name, figures)
    if dom_records:
        md += "\n" + domain_markdown(table, ds)
    write_text(out / "matrix.md", md)
    plan = {
        "dataset": ds.name, "models": models, "train_corrupt": corrupts,
        "seeds": list(seeds), "epochs": epochs, "protocol_seed": protocol_seed, "split": split,
        "runs": {f"{label} [{p.name.rsplit('__to-', 1)[1]}]" if "__to-" in p.name else label: str(p)
                 for label, p in all_runs},
        "protocols": plan_protocols,
        "fingerprint": fingerprint(resolve_runs(all_runs)) if not dom_specs else None,
        **({"domains": ds.info.get("domains"), "domain_splits": dsplits} if dom_specs else {}),
        **({"label_scale_map": ds.info["label_scale_map"]} if "label_scale_map" in ds.info else {}),
    }
    write_json(out / "matrix.json", plan)
    return {**plan, "summary": summary, "headline": headline, "out": out}


def _domain_records(label: str, dspec: str, summary: dict, with_oracle: bool) -> list[dict]:
    """Per-seed rows (protocol ``domain``: target test; ``domain_source``: the sources' test)
    from a domain run's train summary; the target-domain oracle as model ``oracle``."""
    seeds = [str(s) for s in summary["_meta"]["seeds"]]
    rows = []
    blocks = [(label, seeds, summary)]
    if with_oracle and "oracle" in summary:
        blocks.append(("oracle", ["-"] * len(seeds), summary["oracle"]))
    for lab, ss, blk in blocks:
        for split, prot in (("test", "domain"), ("test_source", "domain_source")):
            for metric, v in (blk.get(split) or {}).items():
                vals = v["values"][:1] if lab == "oracle" else v["values"]
                for s, val in zip(ss, vals, strict=False):
                    rows.append({"model": lab, "protocol": prot, "level": dspec, "seed": s,
                                 "metric": metric, "value": float(val)})
    return rows


def domain_table(summary: pd.DataFrame, ds: MSADataset) -> pd.DataFrame:
    """Wide per-split table: for every split and model the target metrics, the target-domain
    oracle's and the in-domain (sources' test) metrics, mean and std over seeds."""
    metrics = list(PLOT_METRICS[metric_kind(ds)])
    rows = []
    for dspec in dict.fromkeys(summary.level):
        s = summary[summary.level == dspec]
        orc = s[(s.model == "oracle") & (s.protocol == "domain")].set_index("metric")
        for model in dict.fromkeys(s.model):
            if model == "oracle":
                continue
            row = {"split": dspec, "target": domain_target(ds, dspec), "model": model}
            for prot, tag in (("domain", "target"), ("domain_source", "in_domain")):
                t = s[(s.model == model) & (s.protocol == prot)].set_index("metric")
                for m in metrics:
                    row[f"{tag}_{m}"] = t.at[m, "mean"] if m in t.index else float("nan")
                    row[f"{tag}_{m}_std"] = t.at[m, "std"] if m in t.index else float("nan")
                    if tag == "target":
                        row[f"oracle_{m}"] = orc.at[m, "mean"] if m in orc.index else float("nan")
            t = s[(s.model == model) & (s.protocol == "domain")]
            row["n_seeds"] = int(t.n_seeds.max()) if len(t) else 0
            rows.append(row)
    return pd.DataFrame(rows)


def domain_markdown(table: pd.DataFrame, ds: MSADataset) -> str:
    """``domains.md``: per split and model, target metrics beside the target-domain oracle
    and the in-domain (sources' test) metrics; says which label scale the numbers are on."""
    metrics = list(PLOT_METRICS[metric_kind(ds)])[::-1]  # MAE first where there is one
    lo, hi = ds.label_range
    scale = f"{ds.label_scale} [{lo:g}, {hi:g}]" if not ds.classes else "classes"
    header = ["split", "model", *[f"target {m}" for m in metrics], *[f"oracle {m}" for m in metrics],
              *[f"in-domain {m}" for m in metrics], "seeds"]
    rows = []
    for _, r in table.iterrows():
        rows.append([r["split"], r["model"],
                     *[pm(r[f"target_{m}"], r[f"target_{m}_std"], n=r["n_seeds"]) for m in metrics],
                     *[f"{r[f'oracle_{m}']:.3f}" if pd.notna(r[f"oracle_{m}"]) else "-" for m in metrics],
                     *[pm(r[f"in_domain_{m}"], r[f"in_domain_{m}_std"], n=r["n_seeds"]) for m in metrics],
                     str(r["n_seeds"])])
    note = (f"Leave-domains-out on {ds.name}: trained and selected on the source domains only; "
            f"`target` is the held-out domain's test split, `in-domain` the sources' test split, "
            f"`oracle` the Bayes-optimal prediction under the target domain's own law (synthetic "
            f"data only). Metrics on the {scale} label scale")
    if ds.info.get("label_scale_map"):
        note += f" ({'; '.join(ds.info['label_scale_map'].values())})"
    return f"### {ds.name}: domain generalisation (mean ± std over seeds)\n\n{note}.\n\n" + markdown(header, rows)


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
        if fig:
            parts.append(f"\n![{dataset} {p}]({fig})\n")
    return "".join(parts)
