"""Tables built from results, never by hand: Markdown, CSV and LaTeX.

* :func:`level_table` / :func:`write_level_tables`: a robustness sweep as one table per metric,
  a row per model, a column per level and the mean over levels (LNLN's headline number).
* :func:`collect_results` / :func:`format_results`: aggregate any run folders (``seed_*/``
  ``metrics.json``, or ``summary.json``) into one table, grouped by any of
  ``run, model, dataset, corrupt``; this is ``msakit results``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from msakit.errors import ConfigError, MissingDataError
from msakit.fileio import read_json

LOWER_IS_BETTER = ("mae",)


def pm(mean: float, std: float, digits: int = 4, latex: bool = False, n: int | None = None) -> str:
    """``0.8123 ± 0.0100``; just the mean when ``n`` (the number of seeds) is 1; ``-`` for a
    missing value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if n == 1:
        return f"{mean:.{digits}f}"
    sep = " $\\pm$ " if latex else " ± "
    return f"{mean:.{digits}f}{sep}{std:.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured Markdown table; the first ``left`` columns left-aligned, the rest
    right-aligned."""
    align = [":--"] * left + ["--:"] * (len(header) - left)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def latex_escape(s: str) -> str:
    s = s.replace("\\", "\x00")
    for ch in "_&%#${}":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\x00", "\\textbackslash{}")


def latex(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    """A booktabs ``table``; cells are used as given (escape names with :func:`latex_escape`)."""
    cols = "l" + "r" * (len(header) - 1)
    lines = ["\\begin{table}[t]", "\\centering", "\\small"]
    if caption:
        lines.append(f"\\caption{{{caption}}}")
    lines += [f"\\begin{{tabular}}{{{cols}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(str(c) for c in r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sweeps
def level_table(
    summary: pd.DataFrame, headline: pd.DataFrame, metric: str, fmt: str = "md", digits: int = 4
) -> tuple[list[str], list[list[str]]]:
    """Header and rows for one metric of one protocol: model x (levels..., mean).

    ``summary``: long form (model, protocol, level, metric, mean, std, n_seeds);
    ``headline``: (model, protocol, metric, mean, std, n_seeds) over levels."""
    s = summary[summary.metric == metric]
    h = headline[headline.metric == metric]
    levels = list(dict.fromkeys(s.level))
    models = list(dict.fromkeys(s.model))
    tex = fmt == "latex"
    header = ["model", *levels, "mean"]
    rows = []
    for model in models:
        cells = [latex_escape(model) if tex else model]
        sm = s[s.model == model].set_index("level")
        for lv in levels:
            cells.append(pm(sm.at[lv, "mean"], sm.at[lv, "std"], digits, tex, sm.at[lv, "n_seeds"])
                         if lv in sm.index else "-")
        hm = h[h.model == model]
        cells.append(pm(hm["mean"].iloc[0], hm["std"].iloc[0], digits, tex, hm["n_seeds"].iloc[0])
                     if len(hm) else "-")
        rows.append(cells)
    if tex:
        header = [latex_escape(c) for c in header]
    return header, rows


def sweep_markdown(summary: pd.DataFrame, headline: pd.DataFrame, metrics: Sequence[str],
                   title: str = "", note: str = "") -> str:
    parts = [f"# {title}\n"] if title else []
    if note:
        parts.append(note.rstrip() + "\n")
    for m in metrics:
        if m not in set(summary.metric):
            continue
        arrow = "lower is better" if m in LOWER_IS_BETTER else "higher is better"
        parts.append(f"\n## {m} ({arrow}; mean ± std over seeds; one value: a single seed)\n\n")
        parts.append(markdown(*level_table(summary, headline, m)))
    return "".join(parts)


def sweep_latex(summary: pd.DataFrame, headline: pd.DataFrame, metrics: Sequence[str],
                title: str = "") -> str:
    parts = []
    for m in metrics:
        if m not in set(summary.metric):
            continue
        cap = latex_escape(f"{title}: {m}" if title else m) + ", mean $\\pm$ std over seeds"
        parts.append(latex(*level_table(summary, headline, m, fmt="latex"), caption=cap))
    return "\n".join(parts)


# --------------------------------------------------------------------------- run folders
def _seed_records(run: Path) -> list[dict]:
    """One record per finished seed of a run folder: config bits and metrics per split."""
    recs = []
    seed_paths = sorted(p for p in [run, *run.glob("seed_*")] if (p / "metrics.json").exists())
    for p in seed_paths:
        cfg_p = p / "config.json"
        cfg = read_json(cfg_p) if cfg_p.exists() else {}
        recs.append({
            "model": cfg.get("model", "?"),
            "dataset": cfg.get("dataset", "?"),
            "corrupt": (cfg.get("train") or {}).get("corrupt") or "none",
            "domain": (cfg.get("train") or {}).get("domain") or "-",
            "seed": cfg.get("seed"),
            "metrics": read_json(p / "metrics.json"),
        })
    if recs:
        return recs
    summ = run / "summary.json"
    if summ.exists():  # only the summary: rebuild per-seed values from it
        s = read_json(summ)
        meta = s.get("_meta", {})
        splits = {k: v for k, v in s.items() if not k.startswith("_") and k != "oracle"}
        splits.update({f"oracle/{k}": v for k, v in s.get("oracle", {}).items()})
        n = max((len(b.get("values", [])) for blk in splits.values() for b in blk.values()), default=0)
        for i in range(n):
            recs.append({
                "model": meta.get("model", "?"), "dataset": meta.get("dataset", "?"),
                "corrupt": meta.get("corrupt") or "none",
                "domain": meta.get("domain") or "-",
                "seed": (meta.get("seeds") or [None] * n)[i],
                "metrics": {k: {m: b["values"][i] for m, b in blk.items()} for k, blk in splits.items()},
            })
    return recs


def find_runs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders under ``dirs``: folders holding ``summary.json`` or ``seed_*/metrics.json``
    or being a single seed (``metrics.json`` + ``config.json``); seed folders of a run are not
    listed separately."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise MissingDataError(f"results: {d} does not exist")
        cands = {p.parent for p in d.rglob("metrics.json")} | {p.parent for p in d.rglob("summary.json")}
        if (d / "metrics.json").exists() or (d / "summary.json").exists():
            cands.add(d)
        runs = set()
        for c in cands:
            runs.add(c.parent if c.name.startswith("seed_") and c != d else c)
        found += sorted(runs)
    if not found:
        raise MissingDataError(
            f"results: no run folders under {[str(d) for d in dirs]} (expected summary.json or "
            f"seed_*/metrics.json, as msakit train writes)"
        )
    return list(dict.fromkeys(found))


GROUP_KEYS = ("run", "model", "dataset", "corrupt", "domain")


def collect_results(
    dirs: Sequence[str | os.PathLike],
    split: str = "test",
    group_by: Sequence[str] = ("run",),
    oracle: bool = True,
) -> pd.DataFrame:
    """One row per group: keys (the group's, and the others that are constant in every group),
    ``n_seeds`` and ``<metric>_mean`` / ``<metric>_std`` columns, pooled over the seeds of every
    run in the group. On synthetic data an ``oracle`` row per dataset and domain split (the
    clean oracle is the same for every run of a dataset, and of a split "A,B->C": C's oracle).
    The ``domain`` column appears only when some run was trained with a domain split."""
    bad = [g for g in group_by if g not in GROUP_KEYS]
    if bad or not group_by:
        raise ConfigError(f"--group-by {list(group_by)}: expected names from {GROUP_KEYS}")
    runs = find_runs(dirs)
    common = os.path.commonpath([str(r) for r in runs]) if len(runs) > 1 else str(runs[0].parent)
    rows, oracle_rows = [], {}
    for run in runs:
        label = os.path.relpath(run, common) if len(runs) > 1 else run.name
        for rec in _seed_records(run):
            if split not in rec["metrics"]:
                raise ConfigError(f"results: {run} has no split {split!r}; it has {sorted(rec['metrics'])}")
            base = {"run": label, "model": rec["model"], "dataset": rec["dataset"],
                    "corrupt": rec["corrupt"], "domain": rec["domain"]}
            rows.append({**base, "seed": rec["seed"], **rec["metrics"][split]})
            okey = f"oracle/{split}"
            if oracle and okey in rec["metrics"]:
                oracle_rows.setdefault((rec["dataset"], rec["domain"]), {
                    "run": "oracle" if rec["domain"] == "-" else f"oracle ({rec['domain']})",
                    "model": "oracle", "dataset": rec["dataset"], "corrupt": "-",
                    "domain": rec["domain"], "seed": None, **rec["metrics"][okey],
                })
    df = pd.DataFrame(rows + list(oracle_rows.values()))
    if (df["domain"] == "-").all():
        if "domain" in group_by:
            raise ConfigError("--group-by domain: no run here was trained with a domain split")
        df = df.drop(columns="domain")
    metric_cols = [c for c in df.columns if c not in (*GROUP_KEYS, "seed")]
    # besides the group keys, show the other keys that are constant within every group
    groups = list(df.groupby(list(group_by), sort=False, dropna=False))
    shown = [k for k in GROUP_KEYS if k in df.columns and (
        k in group_by or all(g[k].nunique(dropna=False) == 1 for _, g in groups))]
    out = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = {k: g[k].iloc[0] for k in shown}
        row.update(zip(group_by, key, strict=True))
        row["n_seeds"] = len(g)
        for m in metric_cols:
            v = g[m].to_numpy(dtype=np.float64)
            row[f"{m}_mean"] = float(np.mean(v))
            row[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return pd.DataFrame(out)


def format_results(df: pd.DataFrame, fmt: str = "md", metrics: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    """``md`` / ``latex`` (mean ± std cells) or ``csv`` (separate mean and std columns)."""
    keys = [c for c in df.columns if c in GROUP_KEYS or c == "n_seeds"]
    avail = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]
    metrics = list(metrics) if metrics else avail
    missing = [m for m in metrics if m not in avail]
    if missing:
        raise ConfigError(f"--metrics {missing}: not in the results; available: {avail}")
    if fmt == "csv":
        cols = keys + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        return df[cols].to_csv(index=False, float_format="%.10g", lineterminator="\n")
    if fmt not in ("md", "latex"):
        raise ConfigError(f"--format {fmt!r}: expected md, csv or latex")
    tex = fmt == "latex"
    header = keys + list(metrics)
    rows = []
    for _, r in df.iterrows():
        cells = [latex_escape(str(r[k])) if tex else str(r[k]) for k in keys]
        cells += [pm(r[f"{m}_mean"], r[f"{m}_std"], digits, tex, r["n_seeds"]) for m in metrics]
        rows.append(cells)
    if tex:
        return latex([latex_escape(h) for h in header], rows)
    return markdown(header, rows, left=len([k for k in keys if k != "n_seeds"]))
