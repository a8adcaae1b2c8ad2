"""MMSLF (issue 12): teacher, student and the student network without distillation (``plain``,
the ablation), clean and under the modality and frames sweeps, per dataset, mean ± std over
seeds. Goal: the student beats ``plain`` on every dataset (mean over seeds).

Cue texts come from ``msakit.prompts``' ``offline`` provider (no network; written once per
dataset into ``OUT/prompts/<dataset>/`` and reused). Per dataset and seed, one
``msakit.train("mmslf", ...)`` call trains the teacher into ``seed_S/teacher/`` and then the
student (``OUT/<dataset>/student``); ``plain`` is its own run (``OUT/<dataset>/plain``). Runs
are resumable: finished ones are reused. Each model is evaluated on the test split, clean and
under each protocol level (protocol seed 0): the teacher with the (label-free) test cue texts,
the student and ``plain`` without any.

Full run (the lead's)::

    python benchmarks/mmslf.py --out runs/mmslf --datasets mosi-text,mosei-text,mosi-bclstm \
        --seeds 1111,1112,1113 --markdown

Seeds in parallel (what BENCHMARKS.md §20 did): one process per seed, ``--seeds S`` each,
into one ``--out``, after the cue texts exist (one earlier process, so that the processes do
not all write them), then the full ``--seeds`` list with ``--markdown``, which reuses the
finished runs and their evaluations.

Tiny check (what a 2-core test machine affords; subsampled splits, a small network)::

    python benchmarks/mmslf.py --out /tmp/mmslf-bench --datasets mosi-bclstm --seeds 1,2 \
        --epochs 2 --limit 96 --levels modality=0,0.5 --levels frames=0,0.5 \
        --set d=16 --set heads=2 --set dim_head=8 --set teacher_depth=2 \
        --set teacher_fusion_depth=1 --set depth=1 --set fusion_depth=1
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

METRICS = ("mae", "acc2_non0", "corr")
PROTOCOLS = ("modality", "frames")


def split_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def subsample(ds, n: int):
    """The first n rows of each split (valid/test: n // 2), for a quick check only."""
    from msakit.data.dataset import MSADataset

    splits = {k: sd.subset(np.arange(min(len(sd), n if k == "train" else max(1, n // 2))))
              for k, sd in ds.splits.items()}
    return MSADataset(name=f"{ds.name}[:{n}]", splits=splits, label_scale=ds.label_scale,
                      oracle=ds.oracle, info=ds.info, label_range=ds.label_range,
                      classes=ds.classes, standardized=ds.standardized)


def prompted_dataset(name: str, out: Path, limit: int | None):
    """``name`` with offline cue texts attached (generated once into OUT/prompts/<name>)."""
    from msakit.data.registry import load_dataset
    from msakit.prompts import attach_prompts, generate_prompts

    ds = load_dataset(name)
    pdir = out / "prompts" / name
    if not (pdir / "manifest.json").exists():
        generate_prompts(ds, pdir, "offline")
    ds = attach_prompts(ds, pdir)
    return subsample(ds, limit) if limit else ds


def levels_of(protocol: str, given: dict[str, str], ds) -> list[str]:
    from msakit.evaluate.robustness import parse_levels

    return parse_levels(given.get(protocol), protocol, ds.modalities)


def evaluate(run_dir: Path, ds, protocols: dict[str, list[str]], bare) -> dict:
    """Test metrics of one seed's model: clean and at every protocol level. ``bare``: the
    dataset without cue texts (what the student and plain are evaluated on). Kept in
    ``run_dir/bench_eval.json`` with the levels, so that the run over all seeds after
    per-seed processes (or a rerun) evaluates nothing twice."""
    from msakit.corrupt import parse_protocol
    from msakit.evaluate.robustness import protocol_spec
    from msakit.fileio import read_json, write_json
    from msakit.train.engine import evaluate_model, load_run_model

    kept = run_dir / "bench_eval.json"
    if kept.exists():
        old = read_json(kept)
        if old.get("protocols") == protocols and old.get("dataset") == ds.name:
            return old["result"]
    model, cfg = load_run_model(run_dir)
    data = ds if cfg["model_config"].get("stage") == "teacher" else bare
    res = {"clean": evaluate_model(model, data, ("test",))["test"]}
    for prot, levels in protocols.items():
        res[prot] = {lv: evaluate_model(model, data, ("test",),
                                        protocol=parse_protocol(protocol_spec(prot, lv)),
                                        seed=0)["test"] for lv in levels}
    write_json(kept, {"dataset": ds.name, "protocols": protocols, "result": res})
    return res


def without_prompts(ds):
    import dataclasses

    from msakit.data.dataset import MSADataset

    splits = {k: dataclasses.replace(sd, prompt_text=None, prompt_ids=None,
                                     prompt_ids_mask=None) for k, sd in ds.splits.items()}
    return MSADataset(name=ds.name, splits=splits, label_scale=ds.label_scale, oracle=ds.oracle,
                      info=ds.info, label_range=ds.label_range, classes=ds.classes,
                      standardized=ds.standardized)


def mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(results: dict, protocols: dict) -> str:
    lines = []
    for dsname, block in results.items():
        lines.append(f"\n**{dsname}** (test split; mean ± std over seeds; sweeps: mean over "
                     f"levels)\n")
        head = ["model", *[f"clean {m}" for m in METRICS],
                *[f"{p} {m}" for p in protocols for m in ("mae", "acc2_non0")]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for model, seeds in block.items():
            cells = [model]
            for m in METRICS:
                cells.append("{:.3f} ± {:.3f}".format(*mean_std([s["clean"][m] for s in seeds])))
            for p in protocols:
                for m in ("mae", "acc2_non0"):
                    per_seed = [np.mean([lv[m] for lv in s[p].values()]) for s in seeds]
                    cells.append("{:.3f} ± {:.3f}".format(*mean_std(per_seed)))
            lines.append("| " + " | ".join(cells) + " |")
        st = mean_std([s["clean"]["mae"] for s in block["student"]])[0]
        pl = mean_std([s["clean"]["mae"] for s in block["plain"]])[0]
        lines.append(f"\nstudent vs plain (clean test MAE, lower is better): {st:.3f} vs "
                     f"{pl:.3f}: {'student ahead' if st < pl else 'plain ahead or equal'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", default="mosi-text,mosei-text,mosi-bclstm")
    ap.add_argument("--seeds", default="1111,1112,1113")
    ap.add_argument("--epochs", type=int, default=None, help="default: the model's (30)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="mmslf config overrides (teacher and student)")
    ap.add_argument("--levels", action="append", default=[], metavar="PROTOCOL=LEVELS",
                    help="e.g. frames=0:0.9:0.1 (default: the protocol's standard levels)")
    ap.add_argument("--limit", type=int, default=None,
                    help="first N training rows (N/2 valid and test): quick checks only")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    import msakit
    from msakit.fileio import write_json
    from msakit.train.engine import TrainConfig

    overrides = dict(s.split("=", 1) for s in args.set)
    given = dict(s.split("=", 1) for s in args.levels)
    seeds = [int(s) for s in split_list(args.seeds)]
    t0 = time.time()
    results: dict[str, dict] = {}
    for name in split_list(args.datasets):
        ds = prompted_dataset(name, args.out, args.limit)
        bare = without_prompts(ds)
        protocols = {p: levels_of(p, given, ds) for p in PROTOCOLS}
        tcfg = TrainConfig(accelerator=args.accelerator)
        runs = {"student": args.out / name / "student", "plain": args.out / name / "plain"}
        for stage, out in runs.items():
            msakit.train("mmslf", ds, out, seeds=seeds, epochs=args.epochs,
                         overrides={**overrides, "stage": stage}, train_config=tcfg)
        block: dict[str, list] = {"teacher": [], "student": [], "plain": []}
        for s in seeds:
            seed_dir = runs["student"] / f"seed_{s}"
            block["teacher"].append(evaluate(seed_dir / "teacher", ds, protocols, bare))
            block["student"].append(evaluate(seed_dir, ds, protocols, bare))
            block["plain"].append(evaluate(runs["plain"] / f"seed_{s}", ds, protocols, bare))
        results[name] = block
        print(table({name: block}, protocols), flush=True)
    meta = {"command": " ".join(["python", "benchmarks/mmslf.py", *(argv or sys.argv[1:])]),
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "date": date.today().isoformat(), "seconds": round(time.time() - t0, 1),
            "protocols": {p: levels_of(p, given, ds) for p in PROTOCOLS}}
    write_json(args.out / "mmslf.json", {"_meta": meta, **results})
    if args.markdown:
        print(f"\n### MMSLF: teacher, student, plain\n\n`{meta['command']}` ({meta['date']}, "
              f"{meta['machine']}, {meta['seconds']} s)\n")
        print(table(results, PROTOCOLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
