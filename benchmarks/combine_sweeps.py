"""Build robustness tables and figures from the per-seed CSVs of ``gpu_synthetic.py``.

    python benchmarks/combine_sweeps.py --sweeps /tmp/m/sweeps --out docs/results/synthetic-mosi \
        --dataset synthetic-mosi

Writes, per protocol, ``OUT/<protocol>/robustness.{csv,md,tex,png,json}`` (the same files as
``msakit robustness``) and prints the headline (mean over levels) of every model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from msakit.evaluate.robustness import SweepResult, summarise, write_sweep


def combine(folder: Path, dataset: str, label_scale: str) -> SweepResult:
    frames, metas = [], []
    for f in sorted(folder.glob("*.csv")):
        frames.append(pd.read_csv(f, dtype={"level": str, "seed": str}))
        j = f.with_suffix(".json")
        if j.exists():
            metas.append(json.loads(j.read_text()))
    per_seed = pd.concat(frames, ignore_index=True).drop_duplicates(
        ["model", "protocol", "level", "seed", "metric"]
    )
    summary, headline = summarise(per_seed)
    meta = dict(metas[0]) if metas else {}
    meta.update(dataset=dataset, label_scale=label_scale,
                runs=[r for m in metas for r in m.get("runs", [])])
    meta.pop("timings", None)
    return SweepResult(per_seed, summary, headline, meta, {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweeps", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--label-scale", default="mosi")
    a = ap.parse_args()
    for pdir in sorted(p for p in a.sweeps.iterdir() if p.is_dir()):
        res = combine(pdir, a.dataset, a.label_scale)
        write_sweep(res, a.out / pdir.name, title=f"{pdir.name} sweep on {a.dataset} (test)")
        h = res.headline
        print(f"\n## {pdir.name}: mean over levels (test)")
        for metric in ("mae", "acc2_non0"):
            sub = h[h.metric == metric].sort_values("mean", ascending=metric == "mae")
            for _, r in sub.iterrows():
                print(f"{metric:10s} {r['model']:28s} {r['mean']:.4f} ± {r['std']:.4f}")


if __name__ == "__main__":
    main()
