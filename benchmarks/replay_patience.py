"""Replay early stopping on finished runs' validation curves: which epoch a run would have
selected, and after how many epochs it would have stopped, had its patience been P.

Exact for runs whose training does not depend on the patience (the learning-rate schedule is
planned over the same epochs either way, as in msakit), because the epochs before a stop are
the same computation. Used for BENCHMARKS.md §13 (LNLN's default patience)::

    python benchmarks/replay_patience.py docs/results/presets-full/lnln-paper-200ep/seed_*/epochs.csv \
        --patience 6,10,20,30
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd


def curve(path: str, metric: str) -> np.ndarray:
    """Per-epoch validation values of a Lightning ``metrics.csv`` (one row per epoch)."""
    df = pd.read_csv(path)
    if metric not in df.columns:
        sys.exit(f"{path}: no column {metric!r}; columns: {', '.join(df.columns)}")
    return df.dropna(subset=[metric]).groupby("epoch")[metric].first().to_numpy()


def replay(v: np.ndarray, patience: int) -> tuple[int, int, float]:
    """(epochs run, selected epoch, its value) with early stopping after ``patience`` epochs
    without a strictly lower value (lower is better)."""
    best, at = np.inf, 0
    for i, x in enumerate(v):
        if x < best:
            best, at = float(x), i
        elif i - at >= patience:
            return i + 1, at, best
    return len(v), at, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--patience", default="6,10,20,30")
    ap.add_argument("--metric", default="val/mae")
    args = ap.parse_args(argv)
    curves = {p: curve(p, args.metric) for p in args.csv}
    print("| patience | epochs run | selected epochs | selected value (mean ± std) |")
    print("|--:|---|---|--:|")
    for pat in [int(p) for p in args.patience.split(",")] + [max(map(len, curves.values()))]:
        runs = [replay(v, pat) for v in curves.values()]
        vals = np.array([r[2] for r in runs])
        std = vals.std(ddof=1) if len(vals) > 1 else 0.0
        print(f"| {pat} | {', '.join(str(r[0]) for r in runs)} | "
              f"{', '.join(str(r[1]) for r in runs)} | {vals.mean():.3f} ± {std:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
