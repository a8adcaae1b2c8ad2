"""The ``msakit`` command line; every command calls the same functions as the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from msakit.display import SHOW, summary_table
from msakit.errors import ConfigError, MsakitError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click errors: "Error: ..." lines, no boxes
)
# wide output when piped (CI logs, files); the terminal's width otherwise
console = Console(width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 180)

# options that take several values, typed as people do: --seeds 1111 1112 1113
LIST_OPTIONS = {
    "train": ("--seeds",),
    "demo": ("--seeds",),
    "matrix": ("--seeds", "--models", "--protocols", "--train-corrupt"),
    "robustness": ("--run",),
}



def expand_list_options(argv: list[str]) -> list[str]:
    """``train --seeds 1 2 3`` -> ``train --seeds 1 --seeds 2 --seeds 3`` for the options in
    :data:`LIST_OPTIONS` (also ``--seeds=1,2``); commas split values everywhere."""
    cmd = next((a for a in argv if not a.startswith("-")), None)
    opts = LIST_OPTIONS.get(cmd or "", ())
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if name in opts:
            vals = [val] if eq else []
            i += 1
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                vals.append(argv[i])
                i += 1
            for v in _split_protocols(vals) or [""]:  # a domain:A,B->C keeps its commas
                out += [name, v]
            continue
        out.append(a)
        i += 1
    return out


@app.command()
def train(
    model: Annotated[str, typer.Option(help="registered model name (msakit models)")],
    dataset: Annotated[str, typer.Option(help="catalog name (msakit datasets) or a file path")],
    out: Annotated[Path, typer.Option(help="output folder; one sub-folder per seed")],
    seeds: Annotated[list[int] | None, typer.Option(
        help="one run per seed (default: 1111 1112 1113)")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    patience: Annotated[int | None, typer.Option(
        help="early stopping: epochs without a better validation score (default 8)")] = None,
    corrupt: Annotated[str | None, typer.Option(help="training corruption, e.g. frames:random")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="model config key=value")] = None,
    preset: Annotated[str | None, typer.Option(
        help="named model settings, e.g. paper (the reference's); --set values win")] = None,
    domain: Annotated[str | None, typer.Option(
        help="domain generalisation 'A,B->C': train and select on source domains A, B; test "
             "reports target C, test_source the sources (e.g. on synthetic-domains)")] = None,
    progress: Annotated[bool, typer.Option(help="Lightning's per-step progress bar")] = False,
    verbose: Annotated[bool, typer.Option(help="show Lightning's own messages")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's)")] = None,
    devices: Annotated[int | None, typer.Option(
        help="data parallel processes per node (CPU processes or GPUs; default 1)")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="machines in a DDP run (default 1)")] = None,
    strategy: Annotated[str | None, typer.Option(
        help="auto (one process, or ddp when devices x nodes > 1) or ddp: Lightning DDP, "
             "gloo on CPU, NCCL on GPUs; launch with torchrun or let Lightning start them")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="cue texts from msakit prompts --out DIR, attached by sample id (MMSLF)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="a run config file (JSON/YAML: set, train), e.g. msakit tune's best.json; "
             "command-line options win")] = None,
    precision: Annotated[str | None, typer.Option(
        help="32 (default) or bf16-mixed: autocast to bfloat16 in training (fast on CPUs "
             "with AMX/AVX512-BF16 and on GPUs); evaluation stays fp32")] = None,
) -> None:
    """Train MODEL on DATASET for each seed; writes OUT/summary.json (mean and std over seeds)."""
    from msakit.train import train as train_fn

    _threads(threads)
    from msakit.models.base import make_config, parse_sets
    from msakit.train.engine import TrainConfig

    overrides = parse_sets(_with_preset(set_, preset), [model])[model]
    topts = {"epochs": epochs, "patience": patience, "domain": domain, "devices": devices,
             "num_nodes": num_nodes, "strategy": strategy, "precision": precision}
    if config is not None:
        from msakit.train.configfile import merge_config, read_config_file

        overrides, topts = merge_config(read_config_file(config), model, overrides,
                                        {**topts, "corrupt": corrupt})
        corrupt = topts.pop("corrupt", None)
    make_config(model, **overrides)  # bad options fail before any data is read
    tcfg = TrainConfig(**{k: v for k, v in topts.items()
                          if v is not None})  # checked before any data is read
    from msakit.train.engine import is_rank_zero

    console.quiet = not is_rank_zero()  # a distributed run's other ranks print nothing
    ds = _load(dataset)
    if prompts is not None:
        from msakit.data.sources.prompts import attach_prompts  # not the prompt writer

        ds = attach_prompts(ds, prompts)
    from msakit.data.report import format_report, inspect_dataset

    console.print(format_report(inspect_dataset(ds), short=True), markup=False, highlight=False)
    from msakit.train.api import DEFAULT_SEEDS

    seeds = list(seeds or DEFAULT_SEEDS)
    summary = train_fn(
        model, ds, out, seeds=seeds, corrupt=corrupt, train_config=tcfg,
        overrides=overrides, progress=progress, verbose=verbose,
        on_seed_start=lambda i, s: console.print(
            f"[{i + 1}/{len(seeds)}] {model}, seed {s} -> {out / f'seed_{s}'}", markup=False
        ),
    )
    key = next((k for k in ("test", "valid") if k in summary), None)
    shown = _shown(summary[key]) if key else SHOW
    shown_splits = ("valid", "test_source", "test") if "test_source" in summary else ("valid", "test")
    rows = [(f"{model} {s}", summary[s]) for s in shown_splits]
    rows += [(f"oracle {s}", summary["oracle"][s]) for s in shown_splits[1:] if "oracle" in summary]
    n = len(summary["_meta"]["seeds"])
    console.print(summary_table(f"{model} on {ds.name} ({n} seeds)", rows, shown))
    console.print(f"wrote {out / 'summary.json'}", markup=False)


def _with_preset(sets: list[str] | None, preset: str | None) -> list[str]:
    """``--preset NAME`` is ``--set preset=NAME`` (given first, so it cannot hide a --set)."""
    return ([f"preset={preset}"] if preset else []) + list(sets or [])


def _threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads {n}: expected an integer >= 1")
        import torch

        torch.set_num_threads(n)


def _load(dataset: str):
    from msakit.data.registry import load_dataset

    return load_dataset(dataset)


def _shown(block: dict) -> tuple[str, ...]:
    """The table columns for a metrics block: the MOSI six, or whatever the task reports."""
    cols = tuple(m for m in SHOW if m in block)
    return cols if len(cols) >= 3 else tuple(block)[:6]


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
    rows = [(s, summary[s]) for s in ("train", "valid", "test_source", "test") if s in summary]
    console.print(summary_table(f"{run}", rows, _shown(summary["test"])))
    if "oracle" in summary:
        console.print(summary_table("oracle (same samples and masks)", [
            (s, summary["oracle"][s]) for s in ("valid", "test_source", "test")
            if s in summary["oracle"]
        ]))


@app.command()
def models() -> None:
    """List the registered models."""
    from rich.markup import escape

    from msakit.registry import scan_models

    t = Table(title="models")
    t.add_column("name")
    t.add_column("description")
    for name, desc in scan_models():
        t.add_row(name, escape(desc))
    console.print(t)


@app.command()
def datasets(
    verify: Annotated[bool, typer.Option(help="check each file's SHA-256")] = True,
    inspect: Annotated[str | None, typer.Option(
        help="report on one dataset (catalog name or path): sizes, presence, feature ranges, "
             "labels, and warnings")] = None,
) -> None:
    """List every catalog dataset: modalities, dims, split sizes, whether its files are here."""
    if inspect is not None:
        from msakit.data.report import format_report, inspect_dataset

        console.print(format_report(inspect_dataset(_load(inspect))), markup=False, highlight=False)
        return
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
    seeds: Annotated[list[int], typer.Option(help="seeds per model")] = [1111, 1112],  # noqa: B006
    workers: Annotated[int | None, typer.Option(help="parallel training processes (default: CPUs)")] = None,
    verbose: Annotated[bool, typer.Option(help="show Lightning's own messages")] = False,
) -> None:
    """Train every model on the synthetic benchmark (with its Bayes-optimal oracle) and on real
    CMU-MOSI when its files are found; print the results and a missing-modality sweep figure."""
    from msakit.demo import run_demo

    run_demo(out, seeds=seeds, console=console, workers=workers, verbose=verbose)


def _split_list(values: list[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` / ``"a,b"`` -> ``["a", "b", "c"]``."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else values
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _split_protocols(values: list[str] | str | None) -> list[str]:
    """Like :func:`_split_list`, but a ``domain:A,B->C`` item keeps its commas."""
    values = [values] if isinstance(values, str) else values or []
    out: list[str] = []
    for v in values:
        out += [v.strip()] if v.strip().startswith("domain:") else _split_list(v)
    return out


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
    models: Annotated[list[str], typer.Option(help="model names, e.g. --models late_fusion mult")],
    out: Annotated[Path, typer.Option(help="output folder (reused to resume)")],
    protocols: Annotated[list[str], typer.Option(
        help="protocols, e.g. --protocols frames modality; 'domain' trains one run per held-out "
             "domain (leave-one-domain-out) and sweeps the others over each target, "
             "'domain:A,B->C' that split only")] = ["frames", "modality", "subset"],  # noqa: B006
    train_corrupt: Annotated[list[str], typer.Option(
        help="comma-separated training corruptions, 'none' for clean, 'default' for the model's own",
    )] = ["none"],  # noqa: B006
    seeds: Annotated[list[str] | None, typer.Option(help="seeds, comma-separated or repeated (default: train's)")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    levels: Annotated[list[str] | None, typer.Option(
        help="per-protocol levels as PROTOCOL=LEVELS, e.g. frames=0:0.9:0.1 (repeatable)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="model config key=value (all models) or model.key=value")] = None,
    preset: Annotated[str | None, typer.Option(
        help="named model settings for every model, e.g. paper; --set values win")] = None,
    seed: Annotated[int, typer.Option(help="protocol seed for evaluation")] = 0,
    split: str = "test",
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator for training")] = "cpu",
    device: Annotated[str, typer.Option(help="torch device for evaluation")] = "cpu",
    precision: Annotated[str, typer.Option(
        help="training precision: 32 or bf16-mixed (as msakit train)")] = "32",
) -> None:
    """Train every model with every training corruption (or reuse finished runs in OUT) and
    evaluate all of them under every protocol: one table and one figure per protocol."""
    from msakit.evaluate.matrix import run_matrix

    lv = {}
    for item in levels or []:
        p, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--levels {item!r}: expected PROTOCOL=LEVELS")
        lv[p.strip()] = spec
    from msakit.train.api import DEFAULT_SEEDS

    try:
        seed_list = [int(s) for s in _split_list(seeds)] if seeds else list(DEFAULT_SEEDS)
    except ValueError:
        raise ConfigError(f"--seeds {' '.join(seeds)}: expected integers") from None
    res = run_matrix(
        dataset, _split_list(models), out, protocols=_split_protocols(protocols),
        train_corrupt=_split_list(train_corrupt),
        seeds=seed_list, epochs=epochs, levels=lv, overrides=_with_preset(set_, preset),
        protocol_seed=seed,
        split=split, accelerator=accelerator, device=device, precision=precision,
        log=lambda msg: console.print(msg, markup=False),
    )
    from msakit.evaluate.robustness import PLOT_METRICS, kind_of_metrics

    scale = kind_of_metrics(res["summary"].metric)
    for p in dict.fromkeys(res["headline"].protocol):
        h = res["headline"][res["headline"].protocol == p]
        console.print(_headline_table(f"{p} on {res['dataset']}", h, PLOT_METRICS[scale]))
    if "domain" in res["protocols"]:
        console.print(f"wrote {out / 'domain' / 'domains.md'} (.csv): target vs oracle vs in-domain per split")
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
    from msakit.evaluate.tables import collect_results, format_results
    from msakit.fileio import write_text

    df = collect_results(dirs, split=split, group_by=_split_list(group_by))
    text = format_results(df, format_, _split_list(metrics) or None)
    if out is not None:
        write_text(out, text)
        console.print(f"wrote {out}", markup=False)
    else:
        typer.echo(text, nl=False)


@app.command("prompts")
def prompts_(
    dataset: Annotated[str, typer.Option(help="catalog name (msakit datasets) or a file path")],
    out: Annotated[Path, typer.Option(help="output folder: prompts.jsonl, manifest.json")],
    provider: Annotated[str, typer.Option(
        help="offline (rules, no network, not an LLM) or openai (any OpenAI-compatible "
             "server)")] = "offline",
    model: Annotated[str, typer.Option(help="openai: the model name the server knows")] = "gpt-4o-mini",
    base_url: Annotated[str, typer.Option(
        help="openai: the API root, e.g. http://127.0.0.1:8000/v1 (vLLM), "
             "http://localhost:11434/v1 (Ollama)")] = "https://api.openai.com/v1",
    api_key_env: Annotated[str, typer.Option(
        help="openai: environment variable holding the API key")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="openai: requests at once")] = 8,
    rpm: Annotated[float, typer.Option(help="openai: requests per minute at most (0: no limit)")] = 0,
    timeout: Annotated[float, typer.Option(help="openai: seconds per request")] = 60.0,
    max_retries: Annotated[int, typer.Option(
        help="openai: retries of a request after 429, 5xx, timeouts")] = 5,
    cache: Annotated[Path | None, typer.Option(
        help="openai: SQLite answer cache (default OUT/cache.sqlite); share it between runs")] = None,
    frames: Annotated[Path | None, typer.Option(
        help="images of each sample in FRAMES/<id>/*.jpg (3 are sent)")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Write one MMSLF cue text per sample (train, valid, test) to OUT/prompts.jsonl; only
    training samples' requests hold the label. Train with them: train --prompts OUT."""
    from msakit.prompts import generate_prompts

    opts = {} if provider != "openai" else dict(
        model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
        rpm=rpm, timeout=timeout, max_retries=max_retries)
    m = generate_prompts(dataset, out, provider, cache=cache, frames=frames,
                         progress=progress, **opts)
    c = m["counts"]
    done = (f"{c['offline']} written offline" if m["provider"] == "offline" else
            f"{c['from_cache']} from the cache, {c['requested']} requested, {c['shared']} "
            f"shared an identical request; {m['http_requests']} HTTP requests")
    console.print(f"prompts: {c['ok']} succeeded, {c['failed']} failed ({done}); wrote "
                  f"{out / 'prompts.jsonl'}", markup=False, highlight=False)
    if c["failed"]:
        err_console.print(f"{c['failed']} sample(s) failed (reasons in prompts.jsonl); run the "
                          f"same command again to retry them", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command()
def tune(
    model: Annotated[str, typer.Option(help="registered model name (msakit models)")],
    dataset: Annotated[str, typer.Option(help="catalog name (msakit datasets) or a file path")],
    out: Annotated[Path, typer.Option(help="output folder: trials/<n>/, trials.csv, best.json")],
    trials: Annotated[int, typer.Option(help="trials in the whole study (all workers together)")],
    space: Annotated[Path | None, typer.Option(
        help="search-space YAML (default: the model's packaged one, msakit/spaces/MODEL.yaml)")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage: a SQLite file (default OUT/study.db) or postgresql://USER@HOST/DB "
             "for workers on many machines")] = None,
    study: Annotated[str | None, typer.Option(
        help="study name; workers with the same name and storage join it (default MODEL-DATASET)")] = None,
    seed: Annotated[int, typer.Option(help="training seed of every trial")] = 1111,
    sampler_seed: Annotated[int, typer.Option(help="TPE sampler seed")] = 0,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs per trial")] = None,
    patience: Annotated[int | None, typer.Option(help="early-stopping patience per trial")] = None,
    corrupt: Annotated[str | None, typer.Option(help="training corruption, e.g. frames:random")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="fixed model config key=value for every trial")] = None,
    preset: Annotated[str | None, typer.Option(help="named model settings, e.g. paper")] = None,
    metric: Annotated[str, typer.Option(
        help="validation metric to optimise (auto: mae, or acc for classes)")] = "auto",
    domain: Annotated[str | None, typer.Option(
        help="domain generalisation 'A,B->C': trials train and are scored on the source domains' "
             "validation rows only")] = None,
    prune: Annotated[bool, typer.Option(help="median pruning on the per-epoch validation metric")] = True,
    heartbeat: Annotated[int, typer.Option(
        help="seconds between a running trial's heartbeats; a trial silent for --grace seconds "
             "(default 2x) is marked failed and retried once")] = 60,
    grace: Annotated[int | None, typer.Option(help="seconds before a silent trial is failed")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's)")] = None,
    verbose: Annotated[bool, typer.Option(help="show Lightning's own messages")] = False,
    precision: Annotated[str | None, typer.Option(
        help="training precision of every trial: 32 or bf16-mixed (as msakit train)")] = None,
) -> None:
    """Hyper-parameter search (Optuna TPE, median pruning) on validation data only; run the
    same command in more processes or machines to add workers. Writes OUT/best.json, which
    `msakit train --config OUT/best.json` retrains."""
    from msakit.models.base import parse_sets
    from msakit.tune import tune as tune_fn

    _threads(threads)
    res = tune_fn(
        model, dataset, space, out, trials, storage=storage, study=study, seed=seed,
        sampler_seed=sampler_seed, epochs=epochs, patience=patience, corrupt=corrupt,
        overrides=parse_sets(_with_preset(set_, preset), [model])[model], metric=metric,
        domain=domain, prune=prune, heartbeat=heartbeat, grace=grace, verbose=verbose,
        precision=precision, log=lambda msg: console.print(msg, markup=False, highlight=False),
    )
    states = ", ".join(f"{n} {s}" for s, n in sorted(res["states"].items()))
    console.print(f"study {res['study']}: {states}", markup=False)
    if res["best"] is None:
        console.print("no trial completed yet; no best.json", markup=False)
        return
    b = res["best"]
    console.print(f"best: trial {b['number']}, {b['config']['tune']['metric']} = {b['value']:.4f}; "
                  f"wrote {out / 'best.json'} and {out / 'trials.csv'}", markup=False)
    console.print(f"retrain: msakit train --model {model} --dataset {dataset} --config "
                  f"{out / 'best.json'} --out RUN", markup=False)


@app.command()
def predict(
    videos: Annotated[list[Path], typer.Argument(help="video files (mp4/mov, webm/mkv, avi)")],
    run: Annotated[str, typer.Option(help="a run folder, one seed's folder, or 'default'")],
    json_: Annotated[bool, typer.Option("--json", help="print JSON (a list, one per video)")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's)")] = None,
) -> None:
    """Sentiment of each video: score and class, modalities present and used, transcript."""
    import json

    from msakit.serve.predict import predict_videos

    _threads(threads)
    results = predict_videos(run, videos)
    if json_:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                err_console.print(f"error: {r['error']}", markup=False, highlight=False)
                continue
            unc = "" if r["uncertainty"] is None else f", uncertainty {r['uncertainty']:.4f}"
            present = ", ".join(m for m, v in r["present"].items() if v) or "none"
            typer.echo(f"{r['file']}: {r['score']:+.3f} {r['class']} ({r['score_kind']}{unc})\n"
                       f"  present: {present}; the model reads: "
                       f"{', '.join(r['model_modalities'])}; used: {', '.join(r['used'])}\n"
                       f"  transcript: {r['transcript']!r}")
    failed = [r["file"] for r in results if "error" in r]
    if failed:
        raise typer.Exit(2)


@app.command()
def serve(
    run: Annotated[str, typer.Option(help="a run folder, one seed's folder, or 'default'")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="largest upload accepted")] = 100.0,
    timeout_s: Annotated[float, typer.Option(help="time limit per request (queue + prediction)")] = 120.0,
    workers: Annotated[int, typer.Option(help="worker processes, each holding the model")] = 1,
    queue: Annotated[int, typer.Option(help="requests that may wait for a worker")] = 8,
    threads: Annotated[int, typer.Option(help="torch CPU threads per worker")] = 1,
) -> None:
    """Serve the run over HTTP: a web page at /, POST /v1/predict, GET /health."""
    from msakit.serve.app import ServeConfig
    from msakit.serve.app import serve as run_server
    from msakit.serve.default import resolve_run

    resolve_run(run)  # a missing default model is one line here, not a worker's traceback
    run_server(ServeConfig(run=run, max_upload_mb=max_upload_mb, timeout_s=timeout_s,
                           workers=workers, queue=queue, threads=threads), host=host, port=port)


@app.command("extract")
def extract_(
    video_dir: Annotated[Path, typer.Argument(
        help="clips: VIDEO_DIR/<video_id>/<clip_id>.mp4 (raw MOSI/MOSEI/SIMS), or media files")],
    out: Annotated[Path, typer.Option(help="dataset folder to write (resumed when it exists)")],
    labels: Annotated[Path | None, typer.Option(
        help="MMSA label.csv (video_id, clip_id, text, label, mode); its text is the transcript")] = None,
    workers: Annotated[int, typer.Option(help="clips extracted at once (processes)")] = 2,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="extract setting key=value, e.g. vision_fps=5, text_source=asr")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Extract text, audio and face features from raw videos into a dataset folder that
    --dataset OUT reads (OUT/aligned.npz: the word-aligned variant)."""
    from msakit.extract.dataset import extract_dataset
    from msakit.extract.settings import ExtractSettings

    settings = ExtractSettings().with_overrides(set_)
    m = extract_dataset(video_dir, out, labels=labels, settings=settings, workers=workers,
                        progress=progress)
    for f in m["failures"]:
        err_console.print(f"failed: {f['id']}: {f['reason']}", markup=False, soft_wrap=True)
    n, secs = len(m["clips"]), sum(c["duration_s"] for c in m["clips"].values())
    console.print(f"{n} clips ({secs:.1f} s of media) extracted, {len(m['failures'])} failed; "
                  f"wrote {out / 'manifest.json'}" + (f", {out / 'unaligned.npz'} and "
                  f"{out / 'aligned.npz'}" if n else ""), markup=False, soft_wrap=True)
    if m["failures"] and not n:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: msakit's own errors (bad input, bad options, unusable run folders) print one
    line on stderr and exit 2; anything else is a bug and keeps its traceback."""
    args = expand_list_options(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="msakit")
    except MsakitError as e:
        msg = " ".join(str(e).split("\n")) or type(e).__name__
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
