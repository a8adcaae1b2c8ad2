"""``msakit demo``: a few models on the synthetic benchmark (with its oracle) and, when its
files are found, on real CMU-MOSI (bc-LSTM features, the feature authors' split)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

DEMO_MODELS = ("late_fusion", "mult", "lnln", "hme", "cyin")
DEMO_DATASETS = ("synthetic-tiny", "mosi-bclstm")


def available_datasets(names=DEMO_DATASETS) -> list[str]:
    """The demo datasets whose files are here (synthetic ones always are)."""
    from msakit.data.catalog import describe_all

    rows = describe_all(verify=False)
    ok = {r["name"] for r in rows if r["status"].startswith("ok") or r["status"] == "built-in"}
    return [n for n in names if n in ok]


def run_demo(out: Path, epochs: int = 8, seeds=(1111, 1112), console: Console | None = None,
             models=DEMO_MODELS) -> dict:
    from msakit.cli import summary_table
    from msakit.models import MODELS
    from msakit.train import train

    console = console or Console()
    models = [m for m in models if m in MODELS]
    results = {}
    for ds in available_datasets():
        rows = []
        for m in models:
            console.print(f"[bold]{m}[/bold] on {ds}: {len(seeds)} seeds, up to {epochs} epochs")
            s = train(m, ds, Path(out) / ds / m, seeds=list(seeds), epochs=epochs)
            rows.append((m, s["test"]))
            results[(ds, m)] = s
            if "oracle" in s and not any(r[0] == "oracle" for r in rows):
                oracle_row = ("oracle (Bayes-optimal)", s["oracle"]["test"])
        if any("oracle" in results[(ds, m)] for m in models):
            rows.append(oracle_row)
        console.print(summary_table(f"{ds}: test split, clean input, mean ± std over {len(seeds)} seeds", rows))
    console.print(f"run folders under {out}")
    return results
