"""Figures built from result tables (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from msakit.fileio import atomic_path


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def plot_sweep(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    width: float = 3.6,
    height: float = 3.3,
    dpi: int = 110,
) -> Path:
    """Metric vs level, one panel per metric, one line per model with a ±std band; the oracle
    (model ``oracle``) is drawn dashed in black. Levels that are numbers get a numeric x axis,
    others (``subset``: l, a, la, ...) are evenly spaced categories. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m in set(summary.metric)]
    if not metrics:
        raise ValueError("plot_sweep: none of the requested metrics is in the results")
    levels = list(dict.fromkeys(summary.level))
    numeric = all(_is_number(str(lv)) for lv in levels)
    xpos = {lv: float(lv) if numeric else i for i, lv in enumerate(levels)}
    models = list(dict.fromkeys(summary.model))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), height), squeeze=False,
                             layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        ci = 0
        for model in models:
            s = summary[(summary.model == model) & (summary.metric == metric)]
            x = [xpos[lv] for lv in s.level]
            mu, sd = s["mean"].to_numpy(), s["std"].to_numpy()
            if model == "oracle":
                ax.plot(x, mu, "k--", lw=1.2, label="oracle")
                continue
            c = colors[ci % len(colors)]
            ci += 1
            ax.plot(x, mu, "-o", color=c, ms=3, lw=1.4, label=model)
            ax.fill_between(x, mu - sd, mu + sd, color=c, alpha=0.18, lw=0)
        ax.set_xlabel(str(summary.protocol.iloc[0]) if len(summary) else "level")
        ax.set_ylabel(metric)
        if not numeric:
            ax.set_xticks(range(len(levels)), levels)
        ax.grid(alpha=0.3, lw=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    path, tmp = atomic_path(path)
    fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path
