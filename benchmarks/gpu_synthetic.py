"""Train and sweep the issue-3/4 model matrix on one dataset in parallel processes (one GPU,
or CPU cores).

Phase 1 trains every (model, training corruption) group, 3 seeds each, one process per group.
Phase 2 evaluates every group under every protocol sweep, one process per (group, protocol);
each writes the per-seed long-form CSV of :func:`msakit.evaluate.robustness.sweep`.
``benchmarks/combine_sweeps.py`` then builds the tables and figures from those CSVs.

    python benchmarks/gpu_synthetic.py --out /tmp/m --dataset synthetic-mosi --epochs 25 \
        --accelerator gpu --device cuda --workers 9
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# (model, training corruption or None for clean; "default" = the model's own)
GROUPS = [
    ("late_fusion", None), ("late_fusion", "frames:random"), ("late_fusion", "modality:0.3"),
    ("mult", None), ("mult", "frames:random"), ("mult", "modality:0.3"),
    ("lnln", "frames:random"), ("hme", "modality:0.3"), ("cyin", "modality:0.3"),
    ("tfn", None), ("lmf", None), ("dashfusion", None), ("dashfusion", "modality:0.3"),
    ("misa", None), ("self_mm", None), ("almt", None),
    # each model's own training corruption (its config's default_corrupt, e.g. a preset's)
    ("lnln", "default"), ("hme", "default"), ("mult", "default"),
]
LEVELS = {
    "frames": "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    "modality": "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7",
    "subset": "l,a,v,la,lv,av,lav",
}


def tag(model: str, corrupt: str | None) -> str:
    c = "clean" if not corrupt else corrupt.replace(":", "-")
    return f"{model}__{c}"


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def train_group(model, corrupt, a) -> str:
    _threads(a.threads)
    import msakit
    from msakit.models.base import parse_sets
    from msakit.train.engine import TrainConfig

    t = time.time()
    # an epoch budget with early stopping on validation: never a wall-clock cap (results must
    # not depend on the machine's load)
    tc = TrainConfig(epochs=a.epochs, patience=a.patience, accelerator=a.accelerator,
                     precision=a.precision, corrupt=None if corrupt == "default" else corrupt or "none")
    s = msakit.train(model, a.dataset, Path(a.out) / "runs" / tag(model, corrupt),
                     seeds=a.seeds, train_config=tc, overrides=parse_sets(a.set, [model])[model])
    return f"{tag(model, corrupt)}: test mae {s['test']['mae']['mean']:.3f} in {time.time() - t:.0f}s"


def sweep_group(model, corrupt, protocol, oracle, a) -> str:
    _threads(a.threads)
    from msakit.evaluate.robustness import sweep

    t = time.time()
    run = Path(a.out) / "runs" / tag(model, corrupt)
    res = sweep([(tag(model, corrupt), run)], protocol, LEVELS[protocol], device=a.device,
                oracle=oracle, protocol_seed=0)
    d = Path(a.out) / "sweeps" / protocol
    d.mkdir(parents=True, exist_ok=True)
    res.per_seed.to_csv(d / f"{tag(model, corrupt)}.csv", index=False, float_format="%.10g")
    (d / f"{tag(model, corrupt)}.json").write_text(json.dumps(res.meta | {"timings": res.timings}))
    return f"sweep {protocol} {tag(model, corrupt)} in {time.time() - t:.0f}s"


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # report and go on: one failing group must not lose the others
        return "FAILED " + repr(args[:3]) + "\n" + traceback.format_exc()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataset", default="synthetic-mosi")
    ap.add_argument("--epochs", type=int, default=None,
                    help="maximum epochs (default: the model config's, e.g. a preset's, else 30)")
    ap.add_argument("--patience", type=int, default=None,
                    help="early-stopping patience (default: the model config's, else 8)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113])
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32", help="32 or bf16-mixed (msakit train --precision)")
    ap.add_argument("--workers", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=None, help="comma list to restrict GROUPS")
    ap.add_argument("--groups", default=None,
                    help="comma list of group tags (e.g. lnln__frames-random) to restrict GROUPS")
    ap.add_argument("--phase", default="train,sweep")
    ap.add_argument("--protocols", default=",".join(LEVELS), help="comma list of sweeps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model config override for every group, as `msakit train --set`")
    a = ap.parse_args()
    groups = [g for g in GROUPS if (a.models is None or g[0] in a.models.split(","))
              and (a.groups is None or tag(*g) in a.groups.split(","))
              and (g[1] != "default" or a.groups is not None)]  # only when asked for
    cost = {"hme": 0, "mult": 1, "lnln": 2, "cyin": 3, "late_fusion": 4, "tfn": 5, "lmf": 6, "dashfusion": 1}  # slowest first
    groups.sort(key=lambda g: cost.get(g[0], 9))
    t0 = time.time()
    import multiprocessing as mp

    with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as ex:
        if "train" in a.phase:
            futs = [ex.submit(_safe, train_group, m, c, a) for m, c in groups]
            for f in as_completed(futs):
                print(f"[{time.time() - t0:5.0f}s] {f.result()}", flush=True)
        if "sweep" in a.phase:
            futs = []
            for p in a.protocols.split(","):
                for i, (m, c) in enumerate(groups):
                    futs.append(ex.submit(_safe, sweep_group, m, c, p, i == 0, a))
            for f in as_completed(futs):
                print(f"[{time.time() - t0:5.0f}s] {f.result()}", flush=True)
    print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)
    os.makedirs(a.out, exist_ok=True)


if __name__ == "__main__":
    main()
