"""Robustness sweeps: saved runs (every seed) evaluated under one protocol at several levels.

``msakit robustness --run DIR [--run DIR2 ...] --protocol frames --levels 0:0.9:0.1 --out OUT``
calls :func:`robustness`, which writes

* ``OUT/robustness.csv``: long form ``model,protocol,level,metric,mean,std,n_seeds``
  (mean and sample std over the runs' training seeds);
* ``OUT/robustness_seeds.csv``: the per-seed values behind it;
* ``OUT/robustness.md`` / ``.tex``: per metric, mean ± std per level and the mean over levels
  (LNLN's headline number; its std is over seeds of each seed's mean over levels);
* ``OUT/robustness.png``: metric vs level with std bands, one line per model;
* ``OUT/robustness.json``: what was evaluated (runs, seeds, dataset, split, protocol seed,
  model-weight fingerprint) and how long each part took.

Every level uses the same protocol seed (default 0), so ``frames`` masks are nested across
levels and every model, seed and the oracle see exactly the same masks; evaluation batches are
taken in row order (no shuffling). On synthetic data (``dataset.oracle``) the oracle appears as
model ``oracle``. The dataset is loaded once; each batch is collated and corrupted once per
level and then fed to every model and seed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from msakit.corrupt import parse_domain, parse_protocol
from msakit.data.batch import collate
from msakit.data.dataset import MSADataset
from msakit.data.registry import load_dataset
from msakit.errors import ConfigError
from msakit.evaluate.plots import plot_sweep
from msakit.evaluate.runs import seed_dirs
from msakit.evaluate.tables import sweep_latex, sweep_markdown
from msakit.fileio import check_out_dir, read_json, write_csv, write_json, write_text
from msakit.metrics import dataset_metrics
from msakit.train.engine import load_run_model

DEFAULT_LEVELS: dict[str, list[str]] = {
    "frames": [f"{i / 10:g}" for i in range(10)],
    "modality": [f"{i / 10:g}" for i in range(8)],
    "subset": ["l", "a", "v", "la", "lv", "av", "lav"],
    "noise": ["0", "0.1", "0.2", "0.5", "1"],
}
TABLE_METRICS = {
    "mosi": ("acc2_non0", "f1_non0", "acc2_has0", "acc7", "mae", "corr"),
    "sims": ("acc2", "f1", "acc5", "mae", "corr"),
    "range": ("mae", "rmse", "corr", "acc_round"),
    "classification": ("acc", "f1_weighted", "f1_macro"),
}
PLOT_METRICS = {
    "mosi": ("acc2_non0", "mae"), "sims": ("acc2", "mae"), "range": ("mae", "corr"),
    "classification": ("acc", "f1_weighted"),
}


def metric_kind(ds: MSADataset) -> str:
    """Which metric family a dataset reports: its label scale, or "classification"."""
    return "classification" if ds.classes else ds.label_scale


def kind_of_metrics(names) -> str:
    """The metric family that produced these metric names (inverse of :func:`metric_kind`)."""
    names = set(names)
    if "f1_weighted" in names:
        return "classification"
    if "rmse" in names:
        return "range"
    return "sims" if "acc2" in names else "mosi"
SUMMARY_COLUMNS = ["model", "protocol", "level", "metric", "mean", "std", "n_seeds"]


# --------------------------------------------------------------------------- levels
def _num(s: str, what: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise ConfigError(f"--levels: {s!r} in {what!r} is not a number") from None


def _fmt(v: float) -> str:
    return f"{round(v, 10):g}"


def default_levels(name: str, modalities: Sequence[str] | None = None) -> list[str]:
    """The protocol's standard levels, fitted to the dataset's modalities: ``modality`` stops
    at the highest realisable rate (V-1)/V (one modality is always kept), ``subset`` lists
    only subsets of the modalities the dataset has."""
    if name not in DEFAULT_LEVELS:
        from msakit.corrupt import PROTOCOLS

        if name not in PROTOCOLS:
            raise ConfigError(
                f"--protocol {name!r}: unknown protocol; known: {', '.join(PROTOCOLS.names())}"
            )
        raise ConfigError(f"--levels: protocol {name!r} has no default levels; give --levels")
    levels = list(DEFAULT_LEVELS[name])
    if modalities:
        v = len(modalities)
        if name == "modality":
            cap = (v - 1) / v if v > 1 else 0.0
            levels = [lv for lv in levels if float(lv) <= cap + 0.05]
        elif name == "subset":
            have = {m[0] if m != "text" else "l" for m in modalities}
            levels = [lv for lv in levels if set(lv) <= have]
    return levels


def parse_levels(
    spec: str | Sequence[str] | None, protocol: str, modalities: Sequence[str] | None = None
) -> list[str]:
    """``"0,0.1,0.2"``, ``"0:0.9:0.1"`` (start:stop:step, stop included), ``"0,0.1,...,0.9"``
    or ``"l,a,v,la"`` -> level strings; None -> the protocol's default levels for a dataset
    with these ``modalities``."""
    name = protocol.split(":")[0]
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return default_levels(name, modalities)
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if str(p).strip()]
    out: list[str] = []
    for i, p in enumerate(parts):
        if p in ("...", "…"):
            if i < 2 or i + 1 >= len(parts):
                raise ConfigError(f"--levels {spec!r}: '...' needs two levels before it and one after")
            a, b, stop = _num(parts[i - 2], spec), _num(parts[i - 1], spec), _num(parts[i + 1], spec)
            step = b - a
            if step <= 0:
                raise ConfigError(f"--levels {spec!r}: levels before '...' must increase")
            n = int(round((stop - b) / step))
            out += [_fmt(b + k * step) for k in range(1, n)]
        elif p.count(":") == 2 and name != "subset":
            a, b, s = (_num(q, spec) for q in p.split(":"))
            if s <= 0 or b < a:
                raise ConfigError(f"--levels {p!r}: expected start:stop:step with step > 0, stop >= start")
            n = int(round((b - a) / s))
            out += [_fmt(a + k * s) for k in range(n + 1)]
        elif name == "subset":
            out.append(p.lower())
        else:
            out.append(_fmt(_num(p, spec)))
    out = list(dict.fromkeys(out))
    if not out:
        raise ConfigError(f"--levels {spec!r}: no levels")
    for lv in out:  # fail early with the protocol's own message
        parse_protocol(protocol_spec(protocol, lv))
    return out


def protocol_spec(protocol: str, level: str) -> str:
    """``("frames", "0.3")`` -> ``"frames:0.3"``; options after the name are kept
    (``("frames:unk=0", "0.3")`` -> ``"frames:0.3:unk=0"``)."""
    name, _, opts = protocol.partition(":")
    return f"{name}:{level}" + (f":{opts}" if opts else "")


# --------------------------------------------------------------------------- runs
@dataclass
class RunGroup:
    """One run folder (one model, one training setup) and its seeds."""

    label: str
    path: Path
    seeds: list[Path]
    model: str
    dataset: str
    corrupt: str | None
    configs: list[dict] = field(default_factory=list)
    domain: str | None = None  # the run's domain split ("A,B->C"), trained with --domain


def resolve_runs(runs: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]]) -> list[RunGroup]:
    """Run folders (or ``(label, folder)`` pairs) -> :class:`RunGroup` with labels: the model
    name, or the folder name when two runs share a model name (then parent/name if needed)."""
    groups = []
    for r in runs:
        label, path = (r if isinstance(r, tuple) else (None, r))
        path = Path(path)
        dirs = seed_dirs(path)
        cfgs = [read_json(d / "config.json") for d in dirs]
        models = {c["model"] for c in cfgs}
        if len(models) > 1:
            raise ConfigError(f"--run {path}: seeds of different models {sorted(models)}")
        doms = {(c.get("train") or {}).get("domain") for c in cfgs}
        if len(doms) > 1:
            raise ConfigError(f"--run {path}: seeds trained on different domain splits {sorted(map(str, doms))}")
        groups.append(RunGroup(
            label or "", path, dirs, cfgs[0]["model"], cfgs[0]["dataset"],
            (cfgs[0].get("train") or {}).get("corrupt"), cfgs, doms.pop(),
        ))
    if len({g.path.resolve() for g in groups}) < len(groups):
        raise ConfigError("--run: the same run folder is given twice")
    auto = [g for g in groups if not g.label]
    for g in auto:
        g.label = g.model
    for namer in (lambda g: g.path.name, lambda g: f"{g.path.parent.name}/{g.path.name}", lambda g: str(g.path)):
        counts: dict[str, int] = {}
        for g in groups:
            counts[g.label] = counts.get(g.label, 0) + 1
        for g in auto:
            if counts[g.label] > 1:
                g.label = namer(g)
    labels = [g.label for g in groups]
    if len(set(labels)) < len(labels) or "oracle" in labels:
        raise ConfigError(f"--run: model labels must be unique and not 'oracle', got {labels}")
    return groups


def fingerprint(groups: Sequence[RunGroup]) -> str:
    """SHA-256 over every seed's weights and config: changes when any run is retrained."""
    h = hashlib.sha256()
    for g in groups:
        h.update(g.label.encode())
        for d in g.seeds:
            for f in ("config.json", "model.pt"):
                h.update((d / f).read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    per_seed: pd.DataFrame  # model, protocol, level, seed, metric, value
    summary: pd.DataFrame  # SUMMARY_COLUMNS
    headline: pd.DataFrame  # model, protocol, metric, mean, std, n_seeds (mean over levels)
    meta: dict
    timings: dict


def summarise(per_seed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sample std (ddof=1; 0 for one seed) over seeds, per level and over levels."""

    def agg(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        rows = []
        for key, g in df.groupby(keys, sort=False):
            v = g["value"].to_numpy(dtype=np.float64)
            rows.append({**dict(zip(keys, key, strict=True)), "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n_seeds": len(v)})
        return pd.DataFrame(rows)

    summary = agg(per_seed, ["model", "protocol", "level", "metric"])[SUMMARY_COLUMNS]
    per_seed_mean = (
        per_seed.groupby(["model", "protocol", "metric", "seed"], sort=False)["value"].mean().reset_index()
    )
    headline = agg(per_seed_mean, ["model", "protocol", "metric"])
    return summary, headline


def sweep(
    runs: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]] | Sequence[RunGroup],
    protocol: str,
    levels: str | Sequence[str] | None = None,
    *,
    protocol_seed: int = 0,
    split: str = "test",
    dataset: str | os.PathLike | MSADataset | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    oracle: bool = True,
) -> SweepResult:
    """Evaluate every seed of every run under ``protocol`` at each level (see module doc).

    Runs trained with a domain split (``--domain A,B->C``) are evaluated on that split's view:
    ``test`` is the target domains' test rows, ``test_source`` the sources'; all runs of one
    sweep must share the split."""
    check_eval_options(batch_size, device)
    groups = [r for r in runs if isinstance(r, RunGroup)] or resolve_runs(runs)  # type: ignore[arg-type]
    name = protocol.split(":")[0]
    if name == "domain":
        raise ConfigError(
            f"--protocol {protocol!r}: a domain split is not a missing-data sweep; runs trained "
            f"with --domain are evaluated on their own split here, and msakit matrix "
            f"--protocols domain trains one run per held-out domain")
    domain = check_domains(groups)
    levels_spec = levels
    if isinstance(dataset, MSADataset):
        ds = dataset
    else:
        names = {g.dataset for g in groups}
        if dataset is None and len(names) > 1:
            raise ConfigError(
                f"--run: the runs were trained on different datasets {sorted(names)}; "
                f"pass --dataset to evaluate them on one"
            )
        ds = load_dataset(dataset if dataset is not None else groups[0].dataset)
    full = ds  # what the runs were trained from (load_run_model checks its content hash)
    if domain is not None and ds.info.get("domain_protocol") != domain:
        ds = parse_domain(domain).view(ds)
    if split not in ds.splits:
        raise ConfigError(f"--split {split!r}: dataset {ds.name!r} has {list(ds.splits)}")
    levels = parse_levels(levels_spec, protocol, ds.modalities)
    sd = ds.splits[split]
    fn = dataset_metrics(ds)
    device = torch.device(device)
    models = []  # (label, seed, model)
    for g in groups:
        for d, cfg in zip(g.seeds, g.configs, strict=True):
            model, _ = load_run_model(d, full)
            if model.input_dims != ds.dims:
                raise ConfigError(f"--run {d}: trained on dims {model.input_dims}, dataset "
                                  f"{ds.name!r} has {ds.dims}")
            models.append((g.label, str(cfg.get("seed", d.name)), model.to(device).eval()))
    views: list[tuple] = []  # (split as a model reads it, indices of the models reading it)
    for k, (_, _, model) in enumerate(models):
        v = model.prepare_split(sd)
        hit = next((w for w in views if w[0] is v), None)
        views.append((v, [k])) if hit is None else hit[1].append(k)
    views.sort(key=lambda w: w[0] is not sd)  # the split as read first (the oracle reads it)
    use_oracle = oracle and ds.oracle is not None and views[0][0] is sd
    t = {"collate": 0.0, "corrupt": 0.0, "forward": 0.0, "oracle": 0.0, "metrics": 0.0}
    records = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for level in levels:
            prot = parse_protocol(protocol_spec(protocol, level))
            preds: list[list[np.ndarray]] = [[] for _ in models]
            ys, orc = [], []
            for i in range(0, len(sd), batch_size):
                rows = np.arange(i, min(i + batch_size, len(sd)))
                for view, ks in views:  # one batch per input view (text encoders tokenise)
                    a = time.perf_counter()
                    b = collate(view, rows)
                    c = time.perf_counter()
                    if prot is not None:
                        b = prot(b, seed=protocol_seed)
                    d = time.perf_counter()
                    t["collate"] += c - a
                    t["corrupt"] += d - c
                    if b.size == 0:
                        break
                    if view is views[0][0]:
                        ys.append(b.y.numpy())
                    if use_oracle and view is sd:
                        orc.append(np.asarray(ds.oracle(b), dtype=np.float64))
                        t["oracle"] += time.perf_counter() - d
                    d = time.perf_counter()
                    bd = b.to(device) if device.type != "cpu" else b
                    for k in ks:
                        preds[k].append(models[k][2](bd).pred.float().cpu().numpy())
                    t["forward"] += time.perf_counter() - d
            a = time.perf_counter()
            y = np.concatenate(ys)
            outs = [(lab, s, np.concatenate(p)) for (lab, s, _), p in zip(models, preds, strict=True)]
            if use_oracle:
                outs.append(("oracle", "-", np.concatenate(orc)))
            for lab, s, p in outs:
                bad = int((~np.isfinite(p)).sum())
                if bad:
                    raise ConfigError(f"model {lab} (seed {s}) predicted {bad} non-finite values "
                                     f"under {protocol_spec(protocol, level)}")
                for metric, v in fn(p, y).items():
                    records.append({"model": lab, "protocol": name, "level": level, "seed": s,
                                    "metric": metric, "value": float(v)})
            t["metrics"] += time.perf_counter() - a
    t["total"] = time.perf_counter() - t0
    per_seed = pd.DataFrame(records)
    summary, headline = summarise(per_seed)
    meta = {
        "protocol": protocol, "levels": levels, "protocol_seed": protocol_seed, "split": split,
        "dataset": ds.name, "label_scale": metric_kind(ds), "n_samples": len(sd),
        "oracle": use_oracle, "batch_size": batch_size, "device": str(device),
        **({"domain": domain, "domains": full.info.get("domains")} if domain else {}),
        **({"label_scale_map": ds.info["label_scale_map"]} if "label_scale_map" in ds.info else {}),
        "runs": [{"label": g.label, "path": str(g.path), "model": g.model, "train_corrupt": g.corrupt,
                  "seeds": [str(c.get("seed")) for c in g.configs]} for g in groups],
    }
    return SweepResult(per_seed, summary, headline, meta, t)


def check_domains(groups: Sequence[RunGroup]) -> str | None:
    """The one domain split every run was trained on (None: trained without one); runs on
    different splits see different test rows and are refused."""
    doms = {g.domain for g in groups}
    if len(doms) > 1:
        have = ", ".join(f"{g.label}: {g.domain or 'no domain split'}" for g in groups)
        raise ConfigError(f"--run: the runs were trained on different domain splits ({have}); "
                          f"sweep runs of one split together")
    return doms.pop() if doms else None


def check_eval_options(batch_size: int, device: str | torch.device) -> torch.device:
    """``--batch-size`` >= 1 and a ``--device`` torch knows and this machine has."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size!r}: expected an integer >= 1")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def write_sweep(
    res: SweepResult,
    out: str | os.PathLike,
    table_metrics: Sequence[str] | None = None,
    plot_metrics: Sequence[str] | None = None,
    title: str | None = None,
    extra_meta: dict | None = None,
) -> dict[str, Path]:
    """Write the CSVs, Markdown, LaTeX, PNG and JSON of a sweep into ``out`` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scale = res.meta["label_scale"]
    table_metrics = list(table_metrics or TABLE_METRICS[scale])
    plot_metrics = list(plot_metrics or PLOT_METRICS[scale])
    unknown = sorted(set(table_metrics + plot_metrics) - set(res.summary.metric))
    if unknown:
        raise ConfigError(f"--metrics {unknown}: unknown; available: {sorted(set(res.summary.metric))}")
    m = res.meta
    title = title or f"{m['protocol'].split(':')[0]} sweep on {m['dataset']} ({m['split']})"
    paths = {k: out / f"robustness{s}" for k, s in (
        ("csv", ".csv"), ("seeds", "_seeds.csv"), ("md", ".md"), ("tex", ".tex"), ("png", ".png"),
        ("json", ".json"))}
    write_csv(paths["csv"], res.summary)
    write_csv(paths["seeds"], res.per_seed)
    note = (f"Protocol `{m['protocol']}`, protocol seed {m['protocol_seed']}, {m['n_samples']} "
            f"{m['split']} samples; columns are levels, `mean` is the mean over levels.")
    if m.get("domain"):
        rows = "the target domains'" if m["split"] == "test" else "the source domains'" \
            if m["split"] == "test_source" else "the"
        note += (f" Runs trained on domain split `{m['domain']}`; `{m['split']}` holds {rows} "
                 f"{'test' if m['split'].startswith('test') else m['split']} rows.")
    if m.get("label_scale_map"):
        note += f" Labels on one scale: {'; '.join(m['label_scale_map'].values())}."
    write_text(paths["md"], sweep_markdown(res.summary, res.headline, table_metrics, title, note))
    write_text(paths["tex"], sweep_latex(res.summary, res.headline, table_metrics, title))
    plot_sweep(res.summary, plot_metrics, paths["png"], title)
    write_json(paths["json"], {**m, **(extra_meta or {}), "timings_s": res.timings,
                               "headline": res.headline.to_dict(orient="records")})
    return paths


def robustness(
    runs: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]],
    protocol: str,
    levels: str | Sequence[str] | None,
    out: str | os.PathLike,
    table_metrics: Sequence[str] | None = None,
    plot_metrics: Sequence[str] | None = None,
    **kw,
) -> SweepResult:
    """:func:`sweep` then :func:`write_sweep`; ``kw`` go to :func:`sweep`."""
    check_out_dir(out)
    groups = resolve_runs(runs)
    res = sweep(groups, protocol, levels, **kw)
    write_sweep(res, out, table_metrics, plot_metrics, extra_meta={"fingerprint": fingerprint(groups)})
    return res
