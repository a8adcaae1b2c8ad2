"""Choose HME's default learning rate on VALIDATION data only.

Trains HME (default config, default training corruption ``modality:0.3``) on synthetic-tiny
for each learning rate of a short grid, with a few seeds and a fixed epoch budget (early
stopping and checkpoint selection on validation MAE, as every run), and selects the rate with
the lowest mean validation MAE, ``summary["valid"]["mae"]["mean"]``. Test MAE is printed for
the record only; it plays no part in the choice.

    python benchmarks/select_hme_lr.py                       # grid 2e-5 1e-4 3e-4 1e-3, seeds 1 2
    python benchmarks/select_hme_lr.py --epochs 6 --out /tmp/hme_lr --lrs 1e-4 3e-4

Writes ``<out>/lr_<lr>/`` run folders and ``<out>/select_hme_lr.json`` (per rate: validation
and test MAE mean and std over seeds, the epochs each seed ran), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import msakit


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic-tiny")
    ap.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 1e-4, 3e-4, 1e-3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="runs/select_hme_lr")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible, no oversubscription)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ds = msakit.load_dataset(args.dataset)
    rows = []
    for lr in args.lrs:
        t0 = time.time()
        s = msakit.train(
            "hme", ds, out / f"lr_{lr:g}", seeds=args.seeds, epochs=args.epochs,
            overrides={"lr": lr},
        )
        row = {
            "lr": lr,
            "valid_mae": s["valid"]["mae"]["mean"], "valid_mae_std": s["valid"]["mae"]["std"],
            "test_mae": s["test"]["mae"]["mean"], "test_mae_std": s["test"]["mae"]["std"],
            "seeds": s["valid"]["mae"].get("n"), "wall_s": round(time.time() - t0, 1),
        }
        rows.append(row)
        print(f"lr {lr:g}: valid MAE {row['valid_mae']:.4f} ± {row['valid_mae_std']:.4f}  "
              f"(test {row['test_mae']:.4f} ± {row['test_mae_std']:.4f})  {row['wall_s']} s",
              flush=True)
    best = min(rows, key=lambda r: r["valid_mae"])
    result = {
        "selected_lr": best["lr"], "criterion": "min mean validation MAE over seeds",
        "dataset": args.dataset, "seeds": args.seeds, "epochs": args.epochs, "rows": rows,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__, "threads": args.threads,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "select_hme_lr.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| lr | valid MAE (selection) | test MAE (not used) |\n|---|---|---|")
    for r in rows:
        mark = " **selected**" if r is best else ""
        print(f"| {r['lr']:g} | {r['valid_mae']:.4f} ± {r['valid_mae_std']:.4f}{mark} "
              f"| {r['test_mae']:.4f} ± {r['test_mae_std']:.4f} |")
    return result


if __name__ == "__main__":
    main()
