"""The ``msakit`` command line; every command calls the same functions as the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False
)
console = Console()

DEFAULT_SEEDS = [1111, 1112, 1113]
SHOW = ("acc2_non0", "f1_non0", "acc2_has0", "acc7", "mae", "corr")


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """``["lr=1e-3", "d=64"]`` -> ``{"lr": "1e-3", "d": "64"}`` (typed later by the config)."""
    out = {}
    for s in sets or []:
        k, sep, v = s.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"--set {s!r}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def summary_table(title: str, rows: list[tuple[str, dict]], metrics=SHOW) -> Table:
    """rows: (label, {metric: {"mean", "std"}})."""
    t = Table(title=title)
    t.add_column("run")
    for m in metrics:
        t.add_column(m, justify="right")
    for label, block in rows:
        cells = []
        for m in metrics:
            v = block.get(m)
            cells.append("-" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}")
        t.add_row(label, *cells)
    return t


@app.command()
def train(
    model: Annotated[str, typer.Option(help="registered model name (msakit models)")],
    dataset: Annotated[str, typer.Option(help="catalog name (msakit datasets) or a file path")],
    out: Annotated[Path, typer.Option(help="output folder; one sub-folder per seed")],
    seeds: Annotated[list[int], typer.Option(help="one run per seed")] = DEFAULT_SEEDS,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    corrupt: Annotated[str | None, typer.Option(help="training corruption, e.g. frames:random")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="model config key=value")] = None,
    progress: bool = False,
) -> None:
    """Train MODEL on DATASET for each seed; writes OUT/summary.json (mean and std over seeds)."""
    from msakit.train import train as train_fn

    summary = train_fn(
        model, dataset, out, seeds=seeds, epochs=epochs, corrupt=corrupt,
        overrides=parse_sets(set_), progress=progress,
    )
    rows = [(f"{model} {s}", summary[s]) for s in ("valid", "test")]
    rows += [(f"oracle {s}", summary["oracle"][s]) for s in ("test",) if "oracle" in summary]
    console.print(summary_table(f"{model} on {dataset} ({len(seeds)} seeds)", rows))
    console.print(f"wrote {out / 'summary.json'}")


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Option(help="a run folder (seed_* inside) or one seed's folder")],
    dataset: Annotated[str | None, typer.Option(help="evaluate on another dataset")] = None,
    corrupt: Annotated[str | None, typer.Option(help="evaluation protocol, e.g. modality:0.3")] = None,
    seed: int = 0,
) -> None:
    """Re-evaluate a saved run (every seed) and print mean and std per split."""
    from msakit.evaluate.runs import evaluate_runs

    summary = evaluate_runs(run, dataset=dataset, protocol=corrupt, seed=seed)
    rows = [(s, summary[s]) for s in ("train", "valid", "test") if s in summary]
    console.print(summary_table(f"{run}", rows))
    if "oracle" in summary:
        console.print(summary_table("oracle (same samples and masks)", [
            (s, summary["oracle"][s]) for s in ("valid", "test") if s in summary["oracle"]
        ]))


@app.command()
def models() -> None:
    """List the registered models."""
    from msakit.models import MODELS

    t = Table(title="models")
    t.add_column("name")
    t.add_column("description")
    for name, spec in MODELS.items():
        t.add_row(name, spec.description)
    console.print(t)


@app.command()
def datasets(
    verify: Annotated[bool, typer.Option(help="check each file's SHA-256")] = True,
) -> None:
    """List every catalog dataset: modalities, dims, split sizes, whether its files are here."""
    from msakit.data.catalog import describe_all

    t = Table(title="datasets")
    for col in ("name", "modalities", "dims", "train/valid/test", "files", "where / how to get"):
        t.add_column(col)
    for row in describe_all(verify=verify):
        t.add_row(
            row["name"], ",".join(row["modalities"]),
            " ".join(f"{m[0]}{d}" for m, d in row.get("dims", {}).items()) or "-",
            "/".join(str(row["sizes"].get(s, "?")) for s in ("train", "valid", "test")) if row.get("sizes") else "-",
            row["status"], row["where"],
        )
    console.print(t)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    epochs: int = 8,
    seeds: Annotated[list[int], typer.Option()] = [1111, 1112],  # noqa: B006
) -> None:
    """Train and evaluate a few models on the synthetic benchmark (and on CMU-MOSI when its
    files are found) and print a results table."""
    from msakit.demo import run_demo

    run_demo(out, epochs=epochs, seeds=seeds, console=console)


def main() -> None:
    """Entry point: user errors print one clear line and exit 2, no traceback."""
    import sys

    try:
        app()
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[red]error:[/red] {msg}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
