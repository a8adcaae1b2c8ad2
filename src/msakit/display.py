"""Console tables shared by the CLI and the demo (rich only: importing this stays fast)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

SHOW = ("acc2_non0", "f1_non0", "acc2_has0", "acc7", "mae", "corr")


def summary_table(title: str, rows: list[tuple[str, dict]], metrics=SHOW) -> Table:
    """rows: (label, {metric: {"mean", "std"}}); a metric a row lacks shows as ``-``."""
    t = Table(title=escape(title))
    t.add_column("run")
    for m in metrics:
        t.add_column(m, justify="right")
    for label, block in rows:
        cells = []
        for m in metrics:
            v = block.get(m)
            cells.append("-" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}")
        t.add_row(escape(label), *cells)
    return t
