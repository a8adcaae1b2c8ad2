"""The ``msakit`` command line; every command calls the same functions as the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False
)
# wide output when piped (CI logs, files); the terminal's width otherwise
console = Console(width=None if sys.stdout.isatty() else 180)

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


def _split_list(values: list[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` / ``"a,b"`` -> ``["a", "b", "c"]``."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else values
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _headline_table(title: str, headline, metrics) -> Table:
    from rich.markup import escape

    t = Table(title=escape(title))
    t.add_column("model")
    for m in metrics:
        t.add_column(f"{m} (mean over levels)", justify="right")
    for model in dict.fromkeys(headline.model):
        cells = []
        for m in metrics:
            h = headline[(headline.model == model) & (headline.metric == m)]
            cells.append(f"{h['mean'].iloc[0]:.4f} ± {h['std'].iloc[0]:.4f}" if len(h) else "-")
        t.add_row(escape(model), *cells)
    return t


@app.command()
def robustness(
    run: Annotated[list[Path], typer.Option(help="a run folder (seed_* inside); repeat for more")],
    protocol: Annotated[str, typer.Option(help="frames, modality, subset or noise")],
    out: Annotated[Path, typer.Option(help="output folder for robustness.csv/.md/.tex/.png")],
    levels: Annotated[str | None, typer.Option(
        help="e.g. 0,0.1,0.2 or 0:0.9:0.1 or 0,0.1,...,0.9 or l,a,v,la,lv,av,lav "
             "(default: the protocol's standard levels)")] = None,
    seed: Annotated[int, typer.Option(help="protocol seed, the same for every level")] = 0,
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    dataset: Annotated[str | None, typer.Option(help="evaluate on another dataset")] = None,
    metrics: Annotated[str | None, typer.Option(help="table metrics, comma-separated")] = None,
    batch_size: int = 128,
    device: Annotated[str, typer.Option(help="torch device for the models, e.g. cuda")] = "cpu",
) -> None:
    """Evaluate saved runs (every seed) under PROTOCOL at each level; writes OUT/robustness.*"""
    from msakit.evaluate.robustness import TABLE_METRICS
    from msakit.evaluate.robustness import robustness as robustness_fn

    res = robustness_fn(
        run, protocol, levels, out, table_metrics=_split_list(metrics) or None,
        protocol_seed=seed, split=split, dataset=dataset, batch_size=batch_size, device=device,
    )
    shown = _split_list(metrics) or list(TABLE_METRICS[res.meta["label_scale"]])[:4]
    console.print(_headline_table(f"{protocol} on {res.meta['dataset']} ({split})", res.headline, shown))
    console.print(f"wrote {out / 'robustness.csv'} (.md, .tex, .png)")


@app.command()
def matrix(
    dataset: Annotated[str, typer.Option(help="catalog name or file path")],
    models: Annotated[str, typer.Option(help="comma-separated model names")],
    out: Annotated[Path, typer.Option(help="output folder (reused to resume)")],
    protocols: Annotated[str, typer.Option(help="comma-separated protocols")] = "frames,modality,subset",
    train_corrupt: Annotated[str, typer.Option(
        help="comma-separated training corruptions, 'none' for clean, 'default' for the model's own",
    )] = "none",
    seeds: Annotated[list[str], typer.Option(help="seeds, comma-separated or repeated")] = ["1111,1112,1113"],  # noqa: B006
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    levels: Annotated[list[str] | None, typer.Option(
        help="per-protocol levels as PROTOCOL=LEVELS, e.g. frames=0:0.9:0.1 (repeatable)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="model config key=value (all models) or model.key=value")] = None,
    seed: Annotated[int, typer.Option(help="protocol seed for evaluation")] = 0,
    split: str = "test",
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator for training")] = "cpu",
    device: Annotated[str, typer.Option(help="torch device for evaluation")] = "cpu",
) -> None:
    """Train every model with every training corruption (or reuse finished runs in OUT) and
    evaluate all of them under every protocol: one table and one figure per protocol."""
    from msakit.evaluate.matrix import run_matrix

    lv = {}
    for item in levels or []:
        p, sep, spec = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--levels {item!r}: expected PROTOCOL=LEVELS")
        lv[p.strip()] = spec
    try:
        seed_list = [int(s) for s in _split_list(seeds)]
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds}: expected integers") from None
    res = run_matrix(
        dataset, _split_list(models), out, protocols=_split_list(protocols),
        train_corrupt=_split_list(train_corrupt),
        seeds=seed_list, epochs=epochs, levels=lv, overrides=set_, protocol_seed=seed,
        split=split, accelerator=accelerator, device=device,
        log=lambda msg: console.print(msg, markup=False),
    )
    from msakit.evaluate.robustness import PLOT_METRICS

    scale = "sims" if "acc2" in set(res["summary"].metric) else "mosi"
    for p in dict.fromkeys(res["headline"].protocol):
        h = res["headline"][res["headline"].protocol == p]
        console.print(_headline_table(f"{p} on {res['dataset']}", h, PLOT_METRICS[scale]))
    console.print(f"wrote {out / 'matrix.md'} and {out / 'matrix.csv'}")


@app.command()
def results(
    dirs: Annotated[list[Path], typer.Argument(help="run folders, or folders holding them")],
    format_: Annotated[str, typer.Option("--format", help="md, csv or latex")] = "md",
    group_by: Annotated[str, typer.Option(help="comma-separated: run, model, dataset, corrupt")] = "run",
    split: Annotated[str, typer.Option(help="split whose metrics are shown")] = "test",
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics (default all)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the table here instead of printing")] = None,
) -> None:
    """Aggregate run folders (seed_*/metrics.json or summary.json) into one table."""
    from msakit.evaluate.tables import collect_results, format_results, write_text

    df = collect_results(dirs, split=split, group_by=_split_list(group_by))
    text = format_results(df, format_, _split_list(metrics) or None)
    if out is not None:
        write_text(out, text)
        console.print(f"wrote {out}", markup=False)
    else:
        typer.echo(text, nl=False)


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
