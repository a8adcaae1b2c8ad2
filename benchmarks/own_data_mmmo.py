"""ICT-MMMO (audio + vision, MFN's HDF5 release) with msakit's own-data path: every model,
3 seeds, with and without the default input normalisation, clean and under the modality sweep,
beside ridge and the median predictor. Selection on validation only; an epoch budget with early
stopping, never a wall-clock cap.

    python benchmarks/own_data_mmmo.py --out runs/bench-mmmo [--epochs 40] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

MODELS = ("late_fusion", "mult", "lnln", "hme", "cyin")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bench-mmmo"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import msakit
    from msakit.evaluate.baselines import median_predictor, ridge_concat, ridge_experts
    from msakit.evaluate.robustness import sweep
    from msakit.train.engine import TrainConfig

    ds = msakit.load_dataset("mfn-mmmo")
    res: dict = {"dataset": ds.name, "sizes": ds.sizes(), "epochs": a.epochs,
                 "patience": a.patience, "seeds": a.seeds, "rows": {}}
    res["median"] = median_predictor(ds)
    res["ridge"] = ridge_concat(ds)
    t0 = time.time()
    levels = None  # the modality protocol's defaults for two modalities: 0 .. 0.5
    res["ridge_experts_sweep"] = {}
    for norm in ("auto", "none"):
        for m in a.models:
            run = a.out / f"{m}__norm-{norm}"
            t = time.time()
            s = msakit.train(m, ds, run, seeds=a.seeds, overrides={"normalize": norm},
                             train_config=TrainConfig(epochs=a.epochs, patience=a.patience))
            sw = sweep([(m, run)], "modality", levels, dataset=ds)
            per_level = sw.summary[(sw.summary.metric == "mae") & (sw.summary.model == m)]
            res["rows"][f"{m} / normalize={norm}"] = {
                "test": {k: s["test"][k] for k in ("mae", "corr", "rmse")},
                "valid_mae": s["valid"]["mae"],
                "modality_mae": {r.level: [r["mean"], r["std"]] for _, r in per_level.iterrows()},
                "seconds": time.time() - t,
            }
            print(m, norm, round(s["test"]["mae"]["mean"], 4), "±", round(s["test"]["mae"]["std"], 4),
                  f"{time.time() - t:.0f}s", flush=True)
    for lv in sorted({lv for r in res["rows"].values() for lv in r["modality_mae"]}, key=float):
        res["ridge_experts_sweep"][lv] = ridge_experts(ds, f"modality:{lv}")["mae"]
    res["total_s"] = time.time() - t0
    res["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.node()}"
    res["date"] = date.today().isoformat()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "result.json").write_text(json.dumps(res, indent=2))
    if a.markdown:
        print(render(res))


def render(res: dict) -> str:
    lv = sorted({lv for r in res["rows"].values() for lv in r["modality_mae"]}, key=float)
    head = "| model | test MAE | test corr | " + " | ".join(f"mr={x}" for x in lv) + " |"
    lines = [head, "|" + "---|" * (3 + len(lv))]
    for name, r in res["rows"].items():
        t = r["test"]
        cells = [f"{t['mae']['mean']:.3f} ± {t['mae']['std']:.3f}", f"{t['corr']['mean']:.3f} ± {t['corr']['std']:.3f}"]
        cells += [f"{r['modality_mae'][x][0]:.3f}" for x in lv]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| ridge (pooled, alpha on valid) | {res['ridge']['mae']:.3f} | {res['ridge']['corr']:.3f} | "
                 + " | ".join(f"{res['ridge_experts_sweep'][x]:.3f}" for x in lv) + " |")
    lines.append(f"| median of train labels | {res['median']['mae']:.3f} | - | " + " | ".join("-" for _ in lv) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
