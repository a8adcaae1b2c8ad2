"""``msakit demo``: the main job. Trains every model on the synthetic benchmark (whose
Bayes-optimal oracle says how far each is from the best possible) and two models on real
CMU-MOSI when its files are found, then sweeps whole-modality missingness on the synthetic
test set and draws the figure.

Seeds run in parallel worker processes (one torch thread each: on small models that beats
one process with several threads); every (model, dataset, seed) is an ordinary run folder,
so a second ``msakit demo`` reuses what is finished.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# (dataset, models, epochs): the synthetic benchmark gets every model, real data two of them
PLAN = (
    ("synthetic-tiny", ("late_fusion", "mult", "lnln", "hme", "cyin", "dashfusion"), 5),
    ("mosi-bclstm", ("late_fusion", "cyin"), 5),
)
SWEEP = ("synthetic-tiny", "modality")


def available_datasets(names) -> list[str]:
    """The demo datasets whose files are here (synthetic ones always are)."""
    from msakit.data.catalog import describe_all

    rows = describe_all(verify=False)
    ok = {r["name"] for r in rows if r["status"].startswith("ok") or r["status"] == "built-in"}
    return [n for n in names if n in ok]


def _job(model: str, dataset: str, seed: int, run_dir: str, epochs: int,
         verbose: bool = False) -> tuple[str, str, int, float]:
    import torch

    torch.set_num_threads(1)
    from msakit.data.registry import load_dataset
    from msakit.train.engine import TrainConfig, fit_seed

    t = time.time()
    fit_seed(model, load_dataset(dataset), seed, run_dir, TrainConfig(epochs=epochs), verbose=verbose)
    return model, dataset, seed, time.time() - t


def run_demo(out: Path, seeds=(1111, 1112), console: Console | None = None, workers: int | None = None,
             plan=PLAN, verbose: bool = False) -> dict:
    from msakit.display import summary_table
    from msakit.errors import ConfigError
    from msakit.train import train

    console = console or Console()
    out = Path(out)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: expected distinct seeds")
    t0 = time.time()
    here = set(available_datasets([ds for ds, _, _ in plan]))
    todo = [(ds, m, e) for ds, ms, e in plan if ds in here for m in ms]
    skipped = [ds for ds, _, _ in plan if ds not in {d for d, _, _ in todo}]
    jobs = [(m, ds, s, str(out / ds / m / f"seed_{s}"), e) for ds, m, e in todo for s in seeds]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    console.print(
        f"msakit demo: {len(jobs)} trainings ({len(seeds)} seeds) on "
        f"{', '.join(dict.fromkeys(d for d, _, _ in todo))} in {workers} worker process(es)"
        + (f"; skipped {', '.join(skipped)} (files not found: msakit datasets)" if skipped else ""),
        markup=False,
    )
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=False) as bar, ProcessPoolExecutor(
        workers, mp_context=get_context("spawn")
    ) as pool:
        task = bar.add_task("training", total=len(jobs))
        futures = [pool.submit(_job, *j, verbose) for j in jobs]
        for f in as_completed(futures):
            model, ds, seed, secs = f.result()
            bar.update(task, advance=1, description=f"training ({model} on {ds}, seed {seed}: {secs:.0f}s)")
        bar.update(task, description="training")

    results = {}
    for ds in dict.fromkeys(d for d, _, _ in todo):
        rows, oracle = [], None
        for d, m, e in todo:
            if d != ds:
                continue
            s = train(m, ds, out / ds / m, seeds=list(seeds), epochs=e, verbose=verbose)
            results[(ds, m)] = s
            rows.append((m, s["test"]))
            oracle = s.get("oracle", {}).get("test", oracle)
        if oracle is not None:
            rows.append(("oracle (Bayes-optimal, same samples)", oracle))
        console.print(summary_table(
            f"{ds}: test split, clean input, mean ± std over {len(seeds)} seeds", rows))

    fig = None
    if SWEEP[0] in {d for d, _, _ in todo}:
        from msakit.evaluate.robustness import robustness

        ds, protocol = SWEEP
        runs = [(m, out / ds / m) for d, m, _ in todo if d == ds]
        sweep_out = out / ds / f"robustness-{protocol}"
        res = robustness(runs, protocol, None, sweep_out)
        fig = sweep_out / "robustness.png"
        mae = res.headline[res.headline.metric == "mae"].set_index("model")["mean"]
        models = mae.drop("oracle", errors="ignore").sort_values()
        oracle = f", oracle {mae['oracle']:.3f}" if "oracle" in mae else ""
        console.print(
            f"{protocol} sweep on {ds} (test, missing rates {', '.join(res.meta['levels'])}): "
            f"MAE averaged over rates: "
            + ", ".join(f"{m} {v:.3f}" for m, v in models.items()) + oracle,
            markup=False,
        )
        console.print(f"sweep table: {sweep_out / 'robustness.md'}", markup=False)
    console.print(f"run folders under {out}; finished in {time.time() - t0:.0f} s", markup=False)
    if fig is not None:
        console.print(f"robustness figure: {fig}", markup=False)
    return results
