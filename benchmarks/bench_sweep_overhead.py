"""Overhead of on-the-fly corruption in a robustness sweep (issue 3, "Speed").

In one process: the 10-level ``frames`` sweep (r = 0, 0.1, ..., 0.9) of a trained model on
``synthetic-mosi``'s test split, against 10 plain evaluation passes (``evaluate_model``, no
corruption) of the same weights on the same split. Both run under ``torch.inference_mode``
with the same batch size, alternated ``--repeats`` times (medians reported). The synthetic
oracle is part of a sweep's output, but it is timed separately (a second sweep with the
oracle on), so the overhead of the corruption itself is clear. Goal: at most 10 %.

    python benchmarks/bench_sweep_overhead.py --model mult --epochs 1 --out bench_sweep.json
    # a run trained elsewhere:  --run runs/mult_synth/seed_1111
    # toy scale:                --n 256,64,128 --epochs 1 --repeats 2

Prints a Markdown section for BENCHMARKS.md (command, machine, date, numbers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path


def machine(device: str) -> str:
    """run_matrix's machine description plus the torch thread count."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from run_matrix import machine as describe

    return f"{describe(device)}, {torch.get_num_threads()} threads"


def load_data(args):
    from msakit.data.registry import DATASETS, load_dataset

    if args.dataset not in DATASETS and not Path(args.dataset).exists():
        raise SystemExit(f"--dataset {args.dataset!r}: not in the catalog and not a path")
    kw = {}
    if args.n:
        kw["n"] = tuple(int(v) for v in args.n.split(","))
    return load_dataset(args.dataset, **kw)


def trained_seed_dir(args, ds) -> Path:
    """The seed folder to benchmark: ``--run`` or a run trained here (reused when finished)."""
    from msakit.evaluate.runs import seed_dirs
    from msakit.models import MODELS
    from msakit.train.engine import TrainConfig, fit_seed

    if args.run:
        return seed_dirs(args.run)[0]
    model = args.model
    if model not in MODELS:
        print(f"note: model {model!r} is not registered; using late_fusion", file=sys.stderr)
        model = "late_fusion"
    overrides = dict(s.split("=", 1) for s in args.set or [])
    tcfg = TrainConfig(epochs=args.epochs, accelerator=args.accelerator)
    run = Path(args.work) / f"{model}_seed{args.seed}"
    print(f"training {model} for {args.epochs} epoch(s) into {run} (reused when finished)", file=sys.stderr)
    fit_seed(model, ds, args.seed, run, tcfg, overrides)
    return run


def bench(args) -> dict:
    import torch

    from msakit.data.dataset import MSADataset
    from msakit.evaluate.robustness import resolve_runs, sweep
    from msakit.train.engine import evaluate_model, load_run_model

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_data(args)
    seed_dir = trained_seed_dir(args, ds)
    model, cfg = load_run_model(seed_dir)
    model = model.to(args.device).eval()
    plain_ds = MSADataset(ds.name, ds.splits, ds.label_scale, oracle=None, info=ds.info)
    groups = resolve_runs([seed_dir])
    levels = [f"{i / 10:g}" for i in range(10)]
    test = ds.splits["test"]

    def plain() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(len(levels)):
                evaluate_model(model, plain_ds, splits=("test",), batch_size=args.batch_size)
        return time.perf_counter() - t

    def swept(oracle: bool) -> dict:
        r = sweep(groups, "frames", levels, dataset=ds, batch_size=args.batch_size,
                  device=args.device, oracle=oracle)
        return r.timings

    plain()  # warm-up (allocator, kernels)
    plain_t, sweep_t, parts = [], [], []
    for k in range(args.repeats):
        if k % 2 == 0:
            plain_t.append(plain())
            parts.append(swept(False))
        else:
            parts.append(swept(False))
            plain_t.append(plain())
        sweep_t.append(parts[-1]["total"])
    with_oracle = swept(True) if ds.oracle is not None else None
    p, s = statistics.median(plain_t), statistics.median(sweep_t)
    corrupt = statistics.median(x["corrupt"] for x in parts)
    return {
        "date": date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(args.device),
        "device": args.device,
        "dataset": ds.name,
        "test_samples": len(test),
        "model": cfg["model"],
        "run": str(seed_dir),
        "batch_size": args.batch_size,
        "levels": levels,
        "repeats": args.repeats,
        "plain_10_passes_s": p,
        "sweep_10_levels_s": s,
        "overhead": s / p - 1.0,
        "corrupt_s": corrupt,
        "corrupt_share_of_sweep": corrupt / s,
        "plain_all_s": plain_t,
        "sweep_all_s": sweep_t,
        "sweep_parts_s": parts,
        "oracle_s": with_oracle["oracle"] if with_oracle else None,
        "sweep_with_oracle_s": with_oracle["total"] if with_oracle else None,
    }


def markdown(r: dict) -> str:
    ok = "meets" if r["overhead"] <= 0.10 else "misses"
    lines = [
        "## Robustness sweep overhead (issue 3)",
        "",
        f"- Command: `{r['command']}`",
        f"- Machine: {r['machine']} (device `{r['device']}`); date {r['date']}",
        f"- Data: `{r['dataset']}`, test split ({r['test_samples']} samples), batch {r['batch_size']}; "
        f"model `{r['model']}` (`{r['run']}`); medians of {r['repeats']} alternated repeats",
        "",
        "| what | seconds |",
        "|:--|--:|",
        f"| 10 plain evaluation passes | {r['plain_10_passes_s']:.3f} |",
        f"| 10-level frames sweep (r = 0 ... 0.9), oracle off | {r['sweep_10_levels_s']:.3f} |",
        f"| of which corruption (protocol calls) | {r['corrupt_s']:.3f} |",
    ]
    if r["oracle_s"] is not None:
        lines.append(f"| oracle on the same masks (timed separately) | {r['oracle_s']:.3f} |")
    lines += [
        "",
        f"Overhead of the sweep over plain evaluation: **{100 * r['overhead']:+.1f} %** "
        f"(corruption itself: {100 * r['corrupt_s'] / r['plain_10_passes_s']:.1f} % of the plain "
        f"time); this {ok} the 10 % goal.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic-mosi")
    ap.add_argument("--n", help="synthetic split sizes train,valid,test (default: the preset's)")
    ap.add_argument("--model", default="mult")
    ap.add_argument("--run", help="a trained run (seed folder or run folder) instead of training")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--set", action="append", help="model config key=value")
    ap.add_argument("--work", default="runs/bench_sweep", help="where the trained run goes")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="evaluation device, e.g. cuda")
    ap.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    res = bench(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
